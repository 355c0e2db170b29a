"""Exact MAP / maximum-likelihood solvers for the pairwise choice models.

The negative log-posterior is ``-sum_r f(d_r, eta) + l2/2 |s|^2 + annotator_l2/2 |tau - 1|^2``
with the linear predictor ``d_r = tau[k_r] * (s[i_r] - s[j_r] + Z_r . beta)``: items ``s``,
position / covariate coefficients ``beta`` (columns of ``Z``), annotator reliabilities ``tau``
and the tie parameter ``eta`` of the outcome model.  Parameters are stacked as
``phi = [s (K), beta (q), tau (M), eta (m)]``.

* :func:`newton_dense` - Newton's method with the exact dense Hessian (assembled with
  ``np.bincount`` over the aggregated rows, O(R + P^2)), a Cholesky solve and backtracking.
  Used up to ``dense_limit`` items (a few thousand).
* :func:`newton_cg` - truncated Newton with a sparse item Hessian (a weighted graph Laplacian
  whose CSR data are the row weights themselves) and preconditioned conjugate gradients,
  O(R + K) memory.
  Used for large K (100k+ items).
* :func:`chord_batch` - all bootstrap rounds at once: the rounds' gradients are one sparse
  matrix product over ``(R, B)`` count matrices and every round takes chord-Newton steps with
  the full-data Hessian, warm-started at the full-data optimum.

Without a prior the scores are defined up to a constant: one reference item is held at 0 while
solving (its row and column are dropped) and the estimator re-centres afterwards.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy.sparse import csr_matrix
from threadpoolctl import ThreadpoolController

_THREADPOOLS = None


def one_blas_thread():
    """Context: BLAS on one thread.  The estimators fit inside it: on shared cores a threaded
    OpenBLAS call waits for its sleeping workers (a 0.04 ms dot product took 6 ms) and dense
    factorizations slow down by 10-30x."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


_one_blas_thread = one_blas_thread


def idle_cpus() -> int:
    """CPUs not running any task at this moment: the CPU count less the runnable tasks (this
    process's running thread included) in ``/proc/loadavg``; 0 where that file is missing."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, (os.cpu_count() or 1) - running)


# aggregated rows from which Objective._plain_pieces and SparseHessian.matvec use threads
# (measured: ~10% faster at 1M rows, no gain at 430k)
PARALLEL_ROWS = 500_000
_POOL = None


def parallel_map(fn, items, *, short: bool = False) -> list:
    """``[fn(x) for x in items]`` on a pool of threads (one per CPU): for work made of large
    numpy / scipy.sparse operations, which release the GIL.  In order; an exception in any call
    is raised here.  ``short``: calls of a millisecond or two, run on threads only while another
    CPU is idle - on a CPU that other work holds, a thread can wait a whole time slice to run,
    longer than the call itself."""
    global _POOL
    items = list(items)
    # inline when called from one of the pool's own threads: waiting there for the pool's
    # other threads could wait forever (all of them busy with the outer calls)
    if (len(items) <= 1 or (os.cpu_count() or 1) == 1
            or threading.current_thread().name.startswith("rm-choice")
            or (short and idle_cpus() == 0)):
        return [fn(x) for x in items]
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                   thread_name_prefix="rm-choice")
    return list(_POOL.map(fn, items))

from .data import first_item_runs
from .outcomes import OutcomeModel


class ConvergenceError(RuntimeError):
    pass


@dataclass
class Layout:
    K: int
    q: int
    M: int
    m: int

    @property
    def size(self) -> int:
        return self.K + self.q + self.M + self.m

    def slices(self):
        K, q, M, m = self.K, self.q, self.M, self.m
        return slice(0, K), slice(K, K + q), slice(K + q, K + q + M), slice(K + q + M, K + q + M + m)


def _first_item_sums(x, first, run_starts, run_items, K: int) -> np.ndarray:
    """Per-item sums of ``x`` over rows by their first item: segment sums over the runs of rows
    with the same first item (``run_starts``, ``run_items``; rows sorted by first item), ~4x
    faster than ``np.bincount``, which stalls on runs of the same index; ``np.bincount`` when the
    rows are not sorted (``run_starts`` None)."""
    if run_starts is None:
        return np.bincount(first, x, K)
    out = np.zeros(K)
    out[run_items] = np.add.reduceat(x, run_starts)
    return out


class Objective:
    """Negative log-posterior of the aggregated rows, its gradient and Hessian."""

    def __init__(self, first, second, counts, outcome: OutcomeModel, *, K: int, Z=None,
                 annotator=None, M: int = 0, l2: float = 0.0, annotator_l2: float = 1.0,
                 reference: int | None = None, first_runs=None):
        self.first = np.ascontiguousarray(first, dtype=np.int64)
        self.second = np.ascontiguousarray(second, dtype=np.int64)
        self.counts = counts  # (wins, losses, ties) arrays, (R,) or (R, B)
        self.outcome = outcome
        self.prepared = outcome.prepare_counts(counts)
        self.Z = None if Z is None or Z.shape[1] == 0 else np.ascontiguousarray(Z, dtype=float)
        self.annotator = annotator if M else None
        self.layout = Layout(K, 0 if self.Z is None else self.Z.shape[1], M, outcome.n_params)
        self.l2 = float(l2)
        self.annotator_l2 = float(annotator_l2)
        self.reference = reference
        R = len(self.first)
        # rows sorted by first item (as aggregate() makes them): per-item sums over the first
        # items are segment sums (np.add.reduceat), ~4x faster than np.bincount, which stalls on
        # runs of the same index
        # ``first_runs``: (starts, items) given by aggregate() for rows that are distinct pairs
        # sorted by pair (PairCounts.first_runs)
        self._first_runs = first_runs
        self._sorted_pairs = first_runs is not None
        if first_runs is None and R and bool(np.all(self.first[1:] >= self.first[:-1])):
            self._first_runs = first_item_runs(self.first)
        self._lower = None  # where the rows' Hessian weights go in a dense matrix: _lower_index()
        self._second_csc = None  # (indptr, indices, ones) of sum_second's product
        self.R = R
        self._parts = self._row_parts()
        self._incidence = None
        # plain logit Bradley-Terry (no covariates, annotators or tie parameter): derivatives from
        # item strengths pi = exp(s) without an exp per row (see _plain_pieces)
        self._plain = (self.Z is None and self.annotator is None and outcome.n_params == 0
                       and outcome.link.name == "logit" and np.ndim(self.prepared[0]) == 1
                       and len(self.prepared) == 3)
        if self._plain:
            w, lo, _ = self.prepared
            self._wins_as = (self.sum_first(w), self.sum_second(w))
            self._losses_as = (self.sum_first(lo), self.sum_second(lo))
            self._net_wins = self._wins_as[0] - self._wins_as[1]
            self._net_losses = self._losses_as[0] - self._losses_as[1]

    def _row_parts(self, n_parts: int | None = None):
        """Row ranges ``(r0, r1, run_starts, run_items)`` for the threads of
        :meth:`_plain_pieces`: one per CPU when there are at least ``PARALLEL_ROWS`` rows, split
        where the first item changes (rows sorted by first item), so each item's first-item sums
        come from one part; ``run_starts`` are relative to ``r0`` (None: rows not sorted)."""
        R = self.R
        if n_parts is None:
            n_parts = min(os.cpu_count() or 1, 8) if R >= PARALLEL_ROWS else 1
        if self._first_runs is None:
            return [(0, R, None, None)]
        starts, items = self._first_runs
        cuts = np.searchsorted(starts, np.linspace(0, R, n_parts + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], cuts, [len(starts)]]))
        parts = []
        for k0, k1 in zip(bounds[:-1], bounds[1:]):
            r0 = int(starts[k0])
            r1 = int(starts[k1]) if k1 < len(starts) else R
            parts.append((r0, r1, starts[k0:k1] - r0, items[k0:k1]))
        return parts

    def upper_structure(self):
        """CSR arrays ``(indptr, indices, perm)`` of the K x K matrix with row r's entry at
        ``(first_r, second_r)``; ``perm`` orders the rows by first item (None when they already
        are).  Built once per objective by a counting sort, O(R + K)."""
        if getattr(self, "_upper", None) is None:
            K, R = self.layout.K, self.R
            index = np.int32 if max(K, R) < 2**31 - 1 else np.int64
            perm = None if self._first_runs is not None else np.argsort(self.first, kind="stable")
            firsts = self.first if perm is None else self.first[perm]
            indptr = np.zeros(K + 1, dtype=index)
            np.cumsum(np.bincount(firsts, minlength=K), out=indptr[1:])
            indices = (self.second if perm is None else self.second[perm]).astype(index)
            self._upper = (indptr, indices, perm)
        return self._upper

    def sum_first(self, x) -> np.ndarray:
        """``sum_{r: first_r = i} x_r`` for every item ``i``."""
        runs = self._first_runs or (None, None)
        return _first_item_sums(x, self.first, *runs, self.layout.K)

    def sum_second(self, x, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """``sum_{r: second_r = i} x_r`` for every item ``i`` (``x`` over rows ``r0:r1``): a
        compiled sparse product (scipy's CSC kernel, one entry a row), which skips
        ``np.bincount``'s passes that check the indices (ours are in range): 1.6x faster."""
        from scipy.sparse import _sparsetools as st

        r1 = self.R if r1 is None else r1
        n = r1 - r0
        if self._second_csc is None:
            index = np.int32 if self.R < 2**31 - 1 else np.int64
            self._second_csc = (np.arange(self.R + 1, dtype=index),
                                self.second.astype(index), np.ones(self.R))
        indptr, second, ones = self._second_csc
        out = np.zeros(self.layout.K)
        st.csc_matvec(self.layout.K, n, indptr[:n + 1], second[r0:r1],
                      np.ascontiguousarray(x, dtype=np.float64), ones[:n], out)
        return out

    # ------------------------------------------------------------------ parameters
    def initial(self) -> np.ndarray:
        """Start at each item's empirical log-odds of winning (ties half), shrunk by the prior;
        from there Newton needs about 4 steps instead of 7 from zero."""
        phi = np.zeros(self.layout.size)
        ss, _, st, se = self.layout.slices()
        if self._plain:  # wins and losses as prepared (ties half or dropped)
            won = self._wins_as[0] + self._losses_as[1]
            lost = self._losses_as[0] + self._wins_as[1]
        else:
            w, lo, t = (np.broadcast_to(c, self.first.shape) for c in self.counts[:3])
            won = self.sum_first(w + 0.5 * t) + self.sum_second(lo + 0.5 * t)
            lost = self.sum_first(lo + 0.5 * t) + self.sum_second(w + 0.5 * t)
        n = won + lost
        s0 = np.log((won + 0.5) / (lost + 0.5)) * (n / (n + 4.0 * self.l2 + 1e-12))
        if self.outcome.link.name == "probit":
            s0 /= 1.7
        s0 -= s0[self.reference] if self.reference is not None else np.mean(s0)
        phi[ss] = s0
        phi[st] = 1.0
        phi[se] = self.outcome.initial_params(self.counts)
        return phi

    def free_mask(self) -> np.ndarray:
        free = np.ones(self.layout.size, dtype=bool)
        if self.reference is not None:
            free[self.reference] = False
        return free

    def predictor(self, phi):
        """``(u, c, d)``: the unscaled difference, the annotator scale and ``d = c u``."""
        ss, sb, st, _ = self.layout.slices()
        s = phi[ss]
        u = s[self.first] - s[self.second]
        if self.Z is not None:
            u = u + self.Z @ phi[sb]
        if self.annotator is not None:
            c = phi[st][self.annotator]
            return u, c, c * u
        return u, None, u

    def _penalty(self, phi):
        ss, _, st, _ = self.layout.slices()
        pen = 0.5 * self.l2 * np.sum(np.square(phi[ss]), axis=0)
        if self.layout.M:
            pen = pen + 0.5 * self.annotator_l2 * np.sum(np.square(phi[st] - 1.0), axis=0)
        return pen

    def _plain_pieces(self, phi, order: int = 2):
        """Value (and gradient and Hessian pieces) of plain logit Bradley-Terry.

        With ``q = exp(s_j - s_i) = pi_j / pi_i`` (``pi = exp(s)``, K exponentials instead of R)
        a row has ``p = 1 / (1 + q)``, log-likelihood ``-n log1p(q) - l d`` and weight
        ``n p (1 - p) = n p q p``; the sums of ``w d`` and ``l d`` over rows are ``s . net``
        with per-item net counts computed once.  Returns None when the scores span more than
        600 (``exp`` would overflow): the general path handles that.
        """
        K = self.layout.K
        s = phi[:K]
        top = float(np.max(s)) if K else 0.0
        if not K or top - float(np.min(s)) > 600.0:
            return None
        pi = np.exp(s - top)
        inv_pi = 1.0 / pi
        cw = np.empty(self.R) if order else None
        # rows in parts (one per thread, see _row_parts): the sums over first items are
        # disjoint between parts, those over second items add up
        parts = parallel_map(lambda part: self._plain_part(part, pi, inv_pi, cw), self._parts,
                             short=True)
        value = (sum(p[0] for p in parts) + float(s @ self._net_losses)
                 + float(self._penalty(phi)))
        if order == 0:
            return {"value": value}
        _, first_np, first_w, second_np, second_w = (sum(column) for column in zip(*parts))
        g = np.zeros(self.layout.size)
        g[:K] = (first_np - second_np) - self._net_wins + self.l2 * s
        diag_s = first_w + second_w + self.l2
        return dict(g=g, diag_s=diag_s, cross=np.zeros((K, 0)), extra=np.zeros((0, 0)), cw=cw,
                    value=value)

    def _plain_part(self, part, pi, inv_pi, cw):
        """One part's share of :meth:`_plain_pieces`: ``(sum n log1p(q), first-item sums of n p
        and of n p (1 - p), second-item sums of both)``; writes the rows' weights ``n p (1 - p)``
        into ``cw`` (None: the value only)."""
        K = self.layout.K
        r0, r1, run_starts, run_items = part
        first, second = self.first[r0:r1], self.second[r0:r1]
        n = self.prepared[2][r0:r1]
        q = np.take(pi, second)  # (np.take: faster than indexing)
        q *= np.take(inv_pi, first)  # exp(-d)
        p = q + 1.0
        value = float(n @ np.log(p))  # log(1 + q)
        if cw is None:
            return value, None, None, None, None
        np.reciprocal(p, out=p)
        n_p = n * p  # expected first-item wins
        w = np.multiply(q, p, out=cw[r0:r1])
        w *= n_p  # n p (1 - p)
        return (value, _first_item_sums(n_p, first, run_starts, run_items, K),
                _first_item_sums(w, first, run_starts, run_items, K),
                self.sum_second(n_p, r0, r1), self.sum_second(w, r0, r1))

    def value(self, phi, counts=None):
        if counts is None and self._plain:
            fast = self._plain_pieces(phi, order=0)
            if fast is not None:
                return fast["value"]
        counts = self.prepared if counts is None else self.outcome.prepare_counts(counts)
        _, _, _, se = self.layout.slices()
        _, _, d = self.predictor(phi)
        ll = self.outcome.derivatives(d, phi[se], counts, order=0, prepared=True).loglik
        return -np.sum(ll, axis=0) + self._penalty(phi)

    def loglik(self, phi) -> float:
        if self._plain:
            fast = self._plain_pieces(phi, order=0)
            if fast is not None:
                return -(fast["value"] - float(self._penalty(phi)))
        _, _, _, se = self.layout.slices()
        _, _, d = self.predictor(phi)
        return float(np.sum(self.outcome.derivatives(d, phi[se], self.prepared, order=0,
                                                     prepared=True).loglik))

    # ------------------------------------------------------------------ derivatives
    def _batch_operators(self):
        """Sparse incidence (K x R) and annotator (M x R) matrices for batched gradients."""
        if self._incidence is None:
            R, K, M = self.R, self.layout.K, self.layout.M
            rows = np.arange(R)
            inc = csr_matrix((np.r_[np.ones(R), -np.ones(R)],
                              (np.r_[self.first, self.second], np.r_[rows, rows])), shape=(K, R))
            ann = None
            if self.annotator is not None:
                ann = csr_matrix((np.ones(R), (self.annotator, rows)), shape=(M, R))
            self._incidence = (inc, ann)
        return self._incidence

    def _logit_residual_inplace(self, phi, counts):
        """``w - n sigmoid(d)`` for all rounds with in-place operations on one reused buffer
        (plain logit Bradley-Terry): no fresh (R, B) allocations, so no page faults."""
        ss, sb, _, _ = self.layout.slices()
        w, _, n = counts
        shape = (self.R, max(phi.shape[1], w.shape[1] if np.ndim(w) == 2 else 1))
        # one buffer per thread: bootstrap batches run on two threads (models._bootstrap)
        spaces = self.__dict__.setdefault("_workspaces", {})
        ws = spaces.get(threading.get_ident())
        if ws is None or ws.shape != shape:
            ws = np.empty(shape)
            spaces[threading.get_ident()] = ws
        buf = ws
        s = phi[ss]
        if s.shape[1] == shape[1]:
            np.subtract(s[self.first], s[self.second], out=buf)
        else:  # one shared column
            buf[...] = (s[self.first] - s[self.second])
        if self.Z is not None:
            buf += self.Z @ phi[sb]
        np.negative(buf, out=buf)
        with np.errstate(over="ignore"):
            np.exp(buf, out=buf)
        buf += 1.0
        np.reciprocal(buf, out=buf)  # sigmoid(d)
        np.multiply(n, buf, out=buf)
        np.subtract(w, buf, out=buf)
        return buf

    def gradient_batch(self, phi, counts, prepared: bool = False):
        """Gradients of every column of ``phi`` (P, B) under its own counts (R, B)."""
        ss, sb, st, se = self.layout.slices()
        if not prepared:
            counts = self.outcome.prepare_counts(counts)
        if (self.annotator is None and self.layout.m == 0 and self.outcome.link.name == "logit"
                and np.ndim(counts[0]) == 2):
            fd = self._logit_residual_inplace(phi, counts)
            g = np.empty((phi.shape[0], fd.shape[1]))
            incidence_t, _ = self._batch_operators()
            g[ss] = -(incidence_t @ fd) + self.l2 * phi[ss]
            if self.Z is not None:
                g[sb] = -(self.Z.T @ fd)
            return g
        u, c, d = self.predictor(phi)
        der = self.outcome.derivatives(d, phi[se], counts, order=1, prepared=True)
        fd = der.fd
        cfd = fd if c is None else c * fd
        B = max(phi.shape[1], fd.shape[1])  # phi may be one shared column (P, 1)
        g = np.empty((phi.shape[0], B))
        incidence_t, annotator_t = self._batch_operators()
        g[ss] = -(incidence_t @ cfd) + self.l2 * phi[ss]
        if self.Z is not None:
            g[sb] = -(self.Z.T @ cfd)
        if self.layout.M:
            g[st] = -(annotator_t @ (u * fd)) + self.annotator_l2 * (phi[st] - 1.0)
        for a, fe in enumerate(der.fe):
            g[se.start + a] = -np.sum(fe, axis=0)
        return g

    def derivatives(self, phi, hessian: str = "dense"):
        """Value, gradient and Hessian pieces at a single ``phi`` (P,)."""
        if self._plain:
            fast = self._plain_pieces(phi)
            if fast is not None:
                return fast
        K = self.layout.K
        ss, sb, st, se = self.layout.slices()
        f, s2 = self.first, self.second
        u, c, d = self.predictor(phi)
        eta = phi[se]
        der = self.outcome.derivatives(d, eta, self.prepared, order=3, prepared=True)
        fd, w = der.fd, -der.fdd
        cfd = fd if c is None else c * fd
        cw = w if c is None else c * c * w
        g = np.zeros(self.layout.size)
        g[ss] = -(np.bincount(f, cfd, K) - np.bincount(s2, cfd, K)) + self.l2 * phi[ss]
        diag_s = np.bincount(f, cw, K) + np.bincount(s2, cw, K) + self.l2
        # extras: beta, tau, eta share one small dense block E x E and a dense K x E cross block
        E = self.layout.q + self.layout.M + self.layout.m
        cross = np.zeros((K, E))
        extra = np.zeros((E, E))
        Zc = None
        if self.Z is not None:
            Zc = self.Z if c is None else c[:, None] * self.Z
            g[sb] = -(Zc.T @ fd)
            extra[: self.layout.q, : self.layout.q] = Zc.T @ (w[:, None] * Zc)
            for t in range(self.layout.q):
                v = cw * self.Z[:, t]
                cross[:, t] = np.bincount(f, v, K) - np.bincount(s2, v, K)
        if self.layout.M:
            M, q, ann = self.layout.M, self.layout.q, self.annotator
            o = q  # offset of tau in the extras
            g[st] = -np.bincount(ann, u * fd, M) + self.annotator_l2 * (phi[st] - 1.0)
            extra[o:o + M, o:o + M] = np.diag(np.bincount(ann, w * u * u, M) + self.annotator_l2)
            omega = w * c * u - fd
            cross[:, o:o + M] = (np.bincount(f * M + ann, omega, K * M)
                                 - np.bincount(s2 * M + ann, omega, K * M)).reshape(K, M)
            if self.Z is not None:
                for t in range(q):
                    extra[t, o:o + M] = np.bincount(ann, omega * self.Z[:, t], M)
                    extra[o:o + M, t] = extra[t, o:o + M]
        if self.layout.m:
            o = self.layout.q + self.layout.M
            for a in range(self.layout.m):
                g[se.start + a] = -np.sum(der.fe[a])
                fde = der.fde[a]
                cfde = fde if c is None else c * fde
                cross[:, o + a] = -(np.bincount(f, cfde, K) - np.bincount(s2, cfde, K))
                if self.Z is not None:
                    extra[: self.layout.q, o + a] = -(self.Z.T @ cfde)
                    extra[o + a, : self.layout.q] = extra[: self.layout.q, o + a]
                if self.layout.M:
                    M = self.layout.M
                    col = -np.bincount(self.annotator, u * fde, M)
                    extra[self.layout.q:self.layout.q + M, o + a] = col
                    extra[o + a, self.layout.q:self.layout.q + M] = col
                for b in range(self.layout.m):
                    extra[o + a, o + b] = -np.sum(der.fee[a][b])
        value = -float(np.sum(der.loglik)) + float(self._penalty(phi))
        pieces = dict(g=g, diag_s=diag_s, cross=cross, extra=extra, cw=cw, value=value)
        return pieces

    def _lower_index(self):
        """``(flat, key)``: with distinct item pairs as rows, each row's flat index in the
        lower triangle of a Fortran-ordered (P, P) matrix - ``first * P + second``, increasing
        for rows sorted by pair, so the scatter writes in order (a plain scatter, ``key``
        None); else ``flat`` None and the rows' (K, K) lower-triangle keys, whose weights are
        summed.  Made on first use: only the dense solver needs it."""
        if self._lower is None:
            K, P = self.layout.K, self.layout.size
            # rows are distinct item pairs when nothing else splits them: scatter without summing
            # (aggregate() says so of plain rows; other rows are checked)
            unique_pairs = False
            if self.Z is None and self.annotator is None:
                unique_pairs = self._sorted_pairs or self._distinct_pairs(K)
            if unique_pairs:
                # (second, first) is in the lower triangle: Fortran order puts it at
                # first * P + second
                flat = self.first * P
                flat += self.second
                self._lower = (flat, None)
            else:
                lo = np.maximum(self.first, self.second)
                hi = np.minimum(self.first, self.second)
                self._lower = (None, lo * K + hi)
        return self._lower

    def _distinct_pairs(self, K: int) -> bool:
        """Whether the rows are distinct pairs with ``first < second``."""
        if not bool(np.all(self.first < self.second)):
            return False
        if self._first_runs is not None:  # sorted by first: check the seconds within runs
            d = np.diff(self.second)
            d[self._first_runs[0][1:] - 1] = 1  # a new first item starts a new run
            if bool(np.all(d > 0)):
                return True
        key = self.first * K + self.second
        return len(np.unique(key)) == len(key)

    def assemble_dense(self, pieces, free=None, out=None, reuse: bool = False) -> np.ndarray:
        """The Hessian's lower triangle (what ``cho_factor(lower=True)`` reads) in a dense
        Fortran-ordered matrix (see :func:`_fortran_triangle`); coordinates not in ``free``
        are pinned (unit diagonal, zero row and column).  ``out``: a Fortran-ordered (P, P)
        matrix to fill (of any float type); ``reuse``: ``out`` holds this objective's last
        Hessian (with the same ``free``), whose entries this one overwrites: no zeroing."""
        K = self.layout.K
        P = self.layout.size
        cw = pieces["cw"]
        flat, key = self._lower_index()
        if out is None:
            H = np.zeros((P, P), order="F")
        else:
            H = out
            if not reuse:
                H.fill(0.0)
        if flat is not None:
            # negated (and cast) first, then scattered: a casting scatter is half as fast
            values = np.negative(cw, out=np.empty(len(cw), dtype=H.dtype), casting="same_kind")
            H.T.ravel()[flat] = values  # H.T is C-ordered: its ravel is a view
        else:
            H[:K, :K] = -np.bincount(key, cw, K * K).reshape(K, K)
        H[np.arange(K), np.arange(K)] = pieces["diag_s"]
        H[K:, :K] = pieces["cross"].T
        H[K:, K:] = pieces["extra"]
        if free is not None and not free.all():
            pinned = np.flatnonzero(~free)
            H[pinned, :] = 0.0
            H[:, pinned] = 0.0
            H[pinned, pinned] = 1.0
        return H

    def dense_hessian(self, phi) -> np.ndarray:
        """The full symmetric Hessian at ``phi``."""
        L = self.assemble_dense(self.derivatives(phi, "none"))
        return np.tril(L) + np.tril(L, -1).T


# ---------------------------------------------------------------------- helpers
def _take_step(obj, phi, step, value, slope, pieces, lower, value_only: bool = False):
    """One damped Newton step: the full step (cut back to stay inside the lower bounds), accepted
    on the Armijo condition, else a backtracking line search. Returns the new point, its value,
    its derivative pieces and the step length ``t`` (0 when no decrease was found).
    ``value_only``: evaluate only the value at the full step (pieces None when it is taken)."""
    t = _first_step_length(phi, step, lower)
    cand = phi + t * step
    cand_pieces = None if value_only else obj.derivatives(cand, "none")
    v = float(obj.value(cand)) if value_only else cand_pieces["value"]
    if _sufficient_decrease(v, value, t, slope):
        return cand, v, cand_pieces, t
    phi_new, value_new, t = _line_search(obj, phi, step, value, slope, lower)
    return phi_new, value_new, obj.derivatives(phi_new, "none") if t > 0 else pieces, t


def _line_search(obj: Objective, phi, step, value, slope, lower):
    """Backtracking (Armijo) that also keeps bounded parameters inside their bounds."""
    t = _first_step_length(phi, step, lower)
    for _ in range(60):
        cand = phi + t * step
        v = obj.value(cand)
        if _sufficient_decrease(v, value, t, slope):
            return cand, v, t
        t *= 0.5
    return phi, value, 0.0


def _first_step_length(phi, step, lower) -> float:
    """1, or less so that the bounded parameters (``lower``: their indices and lower bounds) stay
    inside their bounds: at most 90% of the way to a bound."""
    if lower is None:
        return 1.0
    idx, lo = lower
    bad = phi[idx] + step[idx] <= lo
    if not bad.any():
        return 1.0
    return min(1.0, float(np.min(0.9 * (phi[idx][bad] - lo[bad]) / -step[idx][bad])))


def _sufficient_decrease(v, value, t, slope) -> bool:
    """The Armijo condition for the value ``v`` after a step of length ``t`` along a direction
    of slope ``slope`` from ``value`` (with a relative slack for rounding)."""
    return bool(np.isfinite(v) and v <= value + 1e-4 * t * slope + 1e-12 * abs(value))


def _bounds(obj: Objective):
    lb = obj.outcome.param_lower_bounds()
    if not np.isfinite(lb).any():
        return None
    _, _, _, se = obj.layout.slices()
    idx = np.arange(se.start, se.stop)[np.isfinite(lb)]
    return idx, lb[np.isfinite(lb)]


def _newton_update(obj, phi, g, step, value, pieces, lower, tol):
    """The part of a Newton iteration both solvers share: fall back to steepest descent when
    ``step`` is not a descent direction, take the damped step, and test convergence. Newton
    decrements shrink quadratically, so after a full step with a decrement below
    ``min(1e-2, 1e-8 |f|)`` the gap left is below ~1e-10 |f| (one fewer solve). Returns
    ``(phi, value, pieces, done, converged)``."""
    slope = float(g @ step)
    if slope > 0:  # not a descent direction (indefinite Hessian): steepest descent
        step = -g
        slope = -float(g @ g)
    decrement = -slope
    # a full step with this decrement ends the iteration: only its value is needed (the
    # estimator computes the Hessian at the optimum when the standard errors are first read)
    last = decrement <= min(1e-2, 1e-8 * max(1.0, abs(value))) or decrement <= tol * abs(value)
    phi_new, value_new, pieces_new, t = _take_step(obj, phi, step, value, slope, pieces, lower,
                                                   value_only=last)
    if t == 0.0:
        return phi, value, pieces, True, decrement <= 1e-8 * max(1.0, abs(value))
    scale = max(1.0, abs(value_new))
    predictive = t == 1.0 and decrement <= min(1e-2, 1e-8 * scale)
    done = decrement <= tol * scale or predictive or np.max(np.abs(t * step)) < 1e-12
    if pieces_new is None and not done:
        pieces_new = obj.derivatives(phi_new, "none")
    return phi_new, value_new, pieces_new, done, done


@dataclass
class SolverResult:
    phi: np.ndarray
    value: float
    iterations: int
    converged: bool
    method: str
    factor: object = None  # Cholesky factor of the free Hessian block (dense) or None


def newton_dense(obj: Objective, phi0=None, *, tol: float = 1e-12, max_iter: int = 100) -> SolverResult:
    """Damped Newton with the exact dense Hessian.

    The first trial point of each line search is evaluated with its gradient pieces, which the
    next iteration reuses, so an accepted full step costs one pass over the rows.  The result
    carries the last derivative pieces (``pieces``), from which the caller factors the Hessian at
    the optimum for standard errors.
    """
    phi = obj.initial() if phi0 is None else np.array(phi0, dtype=float)
    free = obj.free_mask()
    lower = _bounds(obj)
    pieces = obj.derivatives(phi, "none")
    value = pieces["value"]
    converged = False
    it = 0
    single = obj.layout.size >= SINGLE_PRECISION_STEPS
    # single precision: each step's Hessian in one float32 matrix (no fresh pages, no copy)
    H32 = np.empty((obj.layout.size,) * 2, dtype=np.float32, order="F") if single else None
    g0 = None  # the first gradient's norm (see _forcing)
    for it in range(1, max_iter + 1):
        g = np.where(free, pieces["g"], 0.0)
        H = obj.assemble_dense(pieces, free, out=H32, reuse=it > 1)
        gnorm = float(np.linalg.norm(g))
        g0 = gnorm if g0 is None else g0
        step = _dense_pcg(H, -g, rtol=_forcing(gnorm, g0)) if single else None
        if step is None:
            step = _solve_damped(H.astype(np.float64, copy=False), -g, single=single,
                                 refine=False)[0]
        step[~free] = 0.0
        phi, value, pieces, done, converged = _newton_update(obj, phi, g, step, value, pieces, lower, tol)
        if done:
            break
    # the factor for standard errors is taken at the optimum, by the caller (result.pieces)
    res = SolverResult(phi, float(value), it, converged, "newton-dense", None)
    res.pieces = pieces
    return res


SINGLE_PRECISION_STEPS = 400


def _forcing(gnorm: float, g0: float) -> float:
    """The relative residual a Newton step by :func:`_dense_pcg` is solved to: loose (1e-3)
    while the gradient is large, then the square of its reduction so far (the inexact Newton
    steps of Eisenstat & Walker 1996 keep Newton's quadratic convergence), down to 1e-7 for
    the last steps.  Far from the optimum a step needs 2-3 products instead of 7-8."""
    return min(1e-3, max(1e-7, (gnorm / max(g0, 1e-300)) ** 2))


def _dense_pcg(H, rhs, rtol: float = 1e-6):
    """A Newton step by Jacobi-preconditioned conjugate gradients on the dense matrix whose lower
    triangle ``H`` holds (products in float32 through BLAS ``ssymv``, vectors in float64); None
    when the matrix is not positive definite along the way or the residual does not fall below
    ``rtol`` within a budget of products that costs less than a Cholesky factorization.

    Comparison graphs that are well mixed (many opponents an item) have Hessians whose
    Jacobi-scaled spectra cluster near 1: a thousand items need 7-8 products (~0.3 ms) where
    the float32 Cholesky factorization takes ~5 ms. A chain-like graph is ill conditioned and
    ends in the factorization, after at most ``max(20, n / 8)`` products.
    """
    n = len(H)
    d = np.diagonal(H).astype(np.float64)
    if not np.all(d > 0) or not np.all(np.isfinite(rhs)):
        return None
    A, lower = _fortran_triangle(H)
    with _one_blas_thread():
        A = A.astype(np.float32, copy=False)  # no copy when H is float32
        symv = sla.blas.ssymv
        dinv = 1.0 / d
        x = np.zeros(n)
        r = np.array(rhs, dtype=np.float64)
        target = rtol * float(np.sqrt(r @ r))
        if target == 0.0:
            return x
        z = r * dinv
        p = z.copy()
        rz = float(r @ z)
        for _ in range(max(20, n // 8)):
            Ap = symv(1.0, A, p.astype(np.float32), lower=lower).astype(np.float64)
            pAp = float(p @ Ap)
            if not pAp > 0.0:
                return None
            alpha = rz / pAp
            x += alpha * p
            r -= alpha * Ap
            if float(np.sqrt(r @ r)) <= target:
                return x
            z = r * dinv
            rz_new = float(r @ z)
            p *= rz_new / rz
            p += z
            rz = rz_new
    return None


def _solve_damped(H, rhs, single: bool = False, refine: bool = True):
    """Cholesky solve; add Levenberg damping when ``H`` is not positive definite.

    ``single``: factor in float32 (twice as fast) - for Newton steps only, where a relative
    error of ~1e-6 in the step is far below the distance to the optimum (an inexact Newton
    step); ``refine``: one step of iterative refinement in float64 brings the solve to ~1e-12
    (Newton's own iterations refine a step, so ``newton_dense`` skips it).  Falls back to
    float64 when the float32 factorization fails.
    """
    if single:
        try:
            A, lower = _fortran_triangle(H)
            with _one_blas_thread():
                U, info = sla.lapack.spotrf(A.astype(np.float32), lower=lower, clean=0,
                                            overwrite_a=1)
            if info == 0:
                if refine:
                    x = _refined_solve(A, lower, U, rhs)
                else:
                    with _one_blas_thread():
                        x = sla.lapack.spotrs(U, rhs.astype(np.float32), lower=lower)[0]
                    x = x.astype(np.float64)
                if np.all(np.isfinite(x)):
                    return x, None
        except (np.linalg.LinAlgError, sla.LinAlgError):
            pass
    mu = 0.0
    scale = max(float(np.max(np.abs(np.diag(H)))), 1e-12) if H.size else 1.0
    # cho_factor(lower=True) reads only the lower triangle (see Objective.assemble_dense)
    for _ in range(30):
        try:
            factor = cholesky(H + mu * np.eye(len(H)) if mu else H)
            return cho_solve(factor, rhs), (factor if mu == 0 else None)
        except (np.linalg.LinAlgError, sla.LinAlgError):
            mu = max(mu * 10.0, 1e-10 * scale)
    raise ConvergenceError("Hessian is not positive definite even with damping: the model is "
                           "not identifiable on this data (add l2=..., or remove a covariate "
                           "that is constant or collinear)")


def _refined_solve(A, lower, U32, rhs):
    """Solve ``A x = rhs`` (``A`` symmetric, given by its ``lower`` or upper triangle) with the
    float32 factor ``U32`` of ``A`` and one float64 refinement step."""
    with _one_blas_thread():
        x = sla.lapack.spotrs(U32, rhs.astype(np.float32), lower=lower)[0].astype(np.float64)
        resid = rhs - sla.blas.dsymv(1.0, A, x, lower=lower)
        x += sla.lapack.spotrs(U32, resid.astype(np.float32), lower=lower)[0]
    return x


def _fortran_triangle(H):
    """``(A, lower)``: the symmetric matrix whose lower triangle ``H`` holds as a
    Fortran-ordered array for LAPACK and BLAS, with the triangle that holds it (``lower``):
    ``H`` itself when Fortran-ordered (as :meth:`Objective.assemble_dense` makes it), ``H.T``
    when C-ordered (``H``'s lower triangle is its upper one); no copy either way."""
    if H.flags.f_contiguous:
        return H, True
    if H.flags.c_contiguous:
        return H.T, False
    return np.asfortranarray(H), True


def cholesky(H):
    """Cholesky factor of the symmetric matrix whose lower triangle ``H`` holds, for
    :func:`cho_solve` (factored in place of a copy, in the layout :func:`_fortran_triangle`
    gives).  Matrices of a few thousand rows are factored on one BLAS thread: threaded
    OpenBLAS slows down by 10-30x when the cores are shared."""
    A, lower = _fortran_triangle(H)
    if len(H) <= 4000:
        with _one_blas_thread():
            return sla.cho_factor(A, lower=lower, check_finite=False)
    return sla.cho_factor(A, lower=lower, check_finite=False)


def inverse_diagonal(factor):
    """``diag(H^-1)`` from a Cholesky factor: squared row (upper) or column (lower) norms of the
    triangular inverse (LAPACK ``trtri``)."""
    from scipy.linalg import lapack

    c, lower = factor
    with _one_blas_thread():
        inv, info = lapack.dtrtri(c, lower=int(lower))
    if info:
        raise np.linalg.LinAlgError("trtri failed")
    tri = np.tril(inv) if lower else np.triu(inv)
    # H^-1 = L^-T L^-1 (lower) or U^-1 U^-T (upper)
    return np.einsum("ij,ij->j" if lower else "ij,ij->i", tri, tri)


def cho_inverse(factor):
    """``H^-1`` from the Cholesky factor (LAPACK ``potri``)."""
    from scipy.linalg import lapack

    c, lower = factor
    with _one_blas_thread():
        inv, info = lapack.dpotri(c, lower=int(lower))
    if info:
        raise np.linalg.LinAlgError("potri failed")
    inv = np.tril(inv) if lower else np.triu(inv)
    return inv + (np.tril(inv, -1).T if lower else np.triu(inv, 1).T)


def single_factor(factor):
    """A Cholesky factor from :func:`cholesky` in single precision, for :func:`cho_solve`."""
    c, lower = factor
    return np.asfortranarray(c, dtype=np.float32), lower


def cho_solve(factor, rhs):
    """``H^-1 rhs`` from :func:`cholesky`'s factor, or :func:`single_factor`'s (solved in
    single precision, returned in double)."""
    c, lower = factor
    if c.dtype == np.float32:
        with _one_blas_thread():
            x, info = sla.lapack.spotrs(c, np.asarray(rhs, dtype=np.float32), lower=lower)
        if info:
            raise np.linalg.LinAlgError("potrs failed")
        return x.astype(np.float64)
    if len(c) <= 4000:
        with _one_blas_thread():
            return sla.cho_solve(factor, rhs, check_finite=False)
    return sla.cho_solve(factor, rhs, check_finite=False)


class SparseHessian:
    """The Hessian at one point: a sparse weighted graph Laplacian for the items plus dense
    blocks for the other parameters.

    The item block is ``diag + U + U^T`` with ``U`` (K x K) holding ``-w_r`` at
    ``(first_r, second_r)``: with the rows sorted by first item (see
    :meth:`Objective.upper_structure`) the row weights *are* ``U``'s CSR data, so building the
    Hessian copies nothing and ``U^T v`` is the same arrays read as CSC.
    """

    def __init__(self, obj: Objective, pieces):
        self.obj = obj
        K = obj.layout.K
        self.indptr, self.indices, perm = obj.upper_structure()
        cw = pieces["cw"]
        self.data = np.negative(cw if perm is None else cw[perm])
        self.diag_s = pieces["diag_s"]
        self.cross = pieces["cross"]
        self.extra = pieces["extra"]
        self.K = K
        E = self.extra.shape[0]
        self.extra_inv = np.linalg.pinv(self.extra) if E else np.zeros((0, 0))

    def _offdiag_add(self, vs, out):
        """``out += (U + U^T) vs`` for ``vs`` of shape (K,) or (K, B) (C-contiguous)."""
        from scipy.sparse import _sparsetools as st

        K = self.K
        if vs.ndim == 1:
            def upper(y):
                st.csr_matvec(K, K, self.indptr, self.indices, self.data, vs, y)

            def lower(y):
                st.csc_matvec(K, K, self.indptr, self.indices, self.data, vs, y)
        else:
            B = vs.shape[1]
            x = vs.ravel()

            def upper(y):
                st.csr_matvecs(K, K, B, self.indptr, self.indices, self.data, x, y.reshape(-1))

            def lower(y):
                st.csc_matvecs(K, K, B, self.indptr, self.indices, self.data, x, y.reshape(-1))
        if len(self.data) >= PARALLEL_ROWS and idle_cpus() > 0:
            # U vs and U^T vs side by side on two threads (sparsetools releases the GIL)
            other = np.zeros_like(out)
            parallel_map(lambda job: job[0](job[1]), [(upper, out), (lower, other)])
            out += other
        else:
            upper(out)
            lower(out)

    def matvec(self, v):
        K = self.K
        vs, ve = np.ascontiguousarray(v[:K]), v[K:]
        out = np.empty_like(v)
        out_s = vs * (self.diag_s if v.ndim == 1 else self.diag_s[:, None])
        self._offdiag_add(vs, out_s)
        out[:K] = out_s
        if len(ve):
            out[:K] += self.cross @ ve
            out[K:] = self.cross.T @ vs + self.extra @ ve
        return out

    def precondition(self, r):
        K = self.K
        out = np.empty_like(r)
        d = self.diag_s if r.ndim == 1 else self.diag_s[:, None]
        out[:K] = r[:K] / d
        if r.shape[0] > K:
            out[K:] = self.extra_inv @ r[K:]
        return out


def pcg(H: SparseHessian, rhs, free, *, rtol=1e-10, max_iter=1000, x0=None):
    """Preconditioned conjugate gradients on the free coordinates; ``rhs`` (P,) or (P, B)."""
    fm = free if rhs.ndim == 1 else free[:, None]
    x = np.zeros_like(rhs) if x0 is None else x0.copy()
    r = np.where(fm, rhs - (H.matvec(x) if x0 is not None else 0.0), 0.0)
    z = np.where(fm, H.precondition(r), 0.0)
    p = z.copy()
    rz = np.sum(r * z, axis=0)
    norm0 = np.sqrt(np.sum(r * r, axis=0))
    target = rtol * np.maximum(norm0, 1e-300)
    it = 0
    for it in range(1, max_iter + 1):
        Ap = np.where(fm, H.matvec(p), 0.0)
        pAp = np.sum(p * Ap, axis=0)
        alpha = np.where(pAp > 0, rz / np.where(pAp > 0, pAp, 1.0), 0.0)
        x += alpha * p
        r -= alpha * Ap
        if np.all(np.sqrt(np.sum(r * r, axis=0)) <= target):
            break
        z = np.where(fm, H.precondition(r), 0.0)
        rz_new = np.sum(r * z, axis=0)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_new
    return x, it


def newton_cg(obj: Objective, phi0=None, *, tol: float = 1e-12, max_iter: int = 100) -> SolverResult:
    """Truncated Newton: PCG on the sparse Hessian with an Eisenstat-Walker forcing term."""
    phi = obj.initial() if phi0 is None else np.array(phi0, dtype=float)
    free = obj.free_mask()
    lower = _bounds(obj)
    pieces = obj.derivatives(phi, "none")
    value = pieces["value"]
    converged = False
    g0 = None
    it = 0
    cg_total = 0
    for it in range(1, max_iter + 1):
        g = np.where(free, pieces["g"], 0.0)
        gnorm = float(np.linalg.norm(g))
        g0 = gnorm if g0 is None else g0
        H = SparseHessian(obj, pieces)
        rtol = min(0.1, max(gnorm / max(g0, 1e-300), 1e-12))
        step, n_cg = pcg(H, -g, free, rtol=rtol)
        cg_total += n_cg
        phi, value, pieces, done, converged = _newton_update(obj, phi, g, step, value, pieces, lower, tol)
        if done:
            break
    res = SolverResult(phi, float(value), it, converged, "newton-cg")
    res.cg_iterations = cg_total
    res.pieces = pieces
    return res


def one_step_batch(obj: Objective, phi_hat, counts, solve):
    """One Newton step per round from the full-data optimum (the estimating-function
    bootstrap of Hu & Kalbfleisch 2000): ``phi_b = phi_hat - H^-1 grad_b(phi_hat)``.

    The predictor is the same for every round at ``phi_hat``, so this is one pass of
    multiply-adds over the (R, B) counts and one sparse product: no exp per round.  The error
    against the exact round optimum is second order in the sampling noise."""
    if isinstance(counts, PlainRounds):
        G = counts.gradient(phi_hat[:, None])
    else:
        counts = obj.outcome.prepare_counts(counts)
        G = obj.gradient_batch(phi_hat[:, None], counts, prepared=True)
    free = obj.free_mask()
    G[~free] = 0.0
    step = -solve(G)
    step[~free] = 0.0
    phi = phi_hat[:, None] + step
    lower = _bounds(obj)
    if lower is not None:
        li, lo = lower
        phi[li] = np.maximum(phi[li], lo[:, None] + 1e-8)
    ok = np.all(np.isfinite(phi), axis=0)
    return phi, ok


BLOCK_CELLS = 200_000  # rows x rounds of a block of PlainRounds.gradient
FLUSH_BLOCKS = 4  # blocks summed in single precision before a double-precision sum
STRIPES = 64  # see PlainRounds.row_order
COMPILED = True  # PlainRounds' passes by compiled loops when numba is there (False: numpy's, as without it)


class PlainRounds:
    """Bootstrap rounds of plain logit Bradley-Terry as compact integer counts, and their
    gradients computed block by block.

    ``wins`` and ``totals`` are (R, B) small-integer matrices (uint8/uint16: 1-2 bytes a cell
    instead of 8) holding ``scale``-multiples of the prepared counts (``scale = 2`` when ties count
    half), their rows in the order :meth:`row_order` gives (``order``).  A round's gradient is
    linear in its counts, so dividing by ``scale`` at the end is exact.  A row's probability
    comes from the round's strengths ``pi = exp(s)`` (``p = pi_i / (pi_i + pi_j)``: K
    exponentials a round instead of R).  A pass over the rows is one compiled loop
    (:mod:`rm.choice.kernels`, numba: the row's residuals for all rounds, added to both items'
    gradients in double precision; 3.5x faster than numpy), or, without numba or with
    ``COMPILED`` off, numpy work on blocks of ``block`` rows (so the (block, B) work arrays stay
    in cache) whose residuals reach the items through one sparse incidence product per block
    (CSC, +1 at the first item, -1 at the second).
    """

    def __init__(self, obj: Objective, wins, totals, scale: float = 1.0, block: int | None = None,
                 single: bool = True, order=None):
        if not obj._plain:
            raise ValueError("PlainRounds needs a plain logit Bradley-Terry objective")
        self.obj = obj
        self.single = bool(single)
        self.wins, self.totals, self.scale = wins, totals, float(scale)
        self.B = wins.shape[1]
        if block is None:
            # ~200k cells a block: (block, B) work arrays near the L2 cache's size, and few
            # enough numpy calls a pass that two bootstrap threads rarely wait for the GIL
            # (blocks of 4,096 rows x 50 rounds: 16% faster on two threads than 1,024)
            block = int(np.clip(BLOCK_CELLS // max(self.B, 1), 256, 16_384))
        self.block = int(block)
        R = obj.R
        index = np.int32 if 2 * R < 2**31 - 1 else np.int64
        self.first = obj.first if order is None else obj.first[order]
        self.second = obj.second if order is None else obj.second[order]
        inc = np.empty(2 * R, dtype=index)
        inc[0::2] = self.first
        inc[1::2] = self.second
        self._incidence = inc
        self._signs = {dt: np.tile(np.array([1.0, -1.0], dtype=dt), self.block)
                       for dt in (np.float32, np.float64)}
        self._indptr = np.arange(0, 2 * self.block + 1, 2, dtype=index)
        # set by the first gradient at a shared point (the warm start): each row's probability
        # there and that gradient (see gradient)
        self._base = None

    @staticmethod
    def row_order(R: int) -> np.ndarray:
        """The rows in ``STRIPES`` interleaved stripes (rows ``0, 64, 128, ...``, then ``1, 65,
        ...``): aggregated rows come sorted by first item, and a block of them would hold all of
        an item's rows as first item; in this order an item has a few rows in each block, so
        the sums over a few blocks stay small enough to be taken in single precision."""
        return np.concatenate([np.arange(j, R, STRIPES) for j in range(min(STRIPES, R))]
                              or [np.zeros(0, dtype=np.int64)])

    def _row_sums(self, fill, dtype, small: bool = False, B: int | None = None) -> np.ndarray:
        """``sum_r x_r (e_first_r - e_second_r)`` (K, B) in double precision, where
        ``fill(start, stop, out)`` writes the rows' ``x`` block by block into ``out``
        (``dtype``).  Terms are summed in double precision, except ``small`` single-precision
        ones (differences from a base point), whose sums over ``FLUSH_BLOCKS`` blocks stay
        small: summed in single precision that long (no conversion), then in double."""
        from scipy.sparse import _sparsetools as st

        K, R, rb = self.obj.layout.K, self.obj.R, self.block
        B = self.B if B is None else B
        g = np.zeros((K, B))
        single_sums = small and dtype != np.float64
        acc = np.zeros((K, B), dtype=dtype) if single_sums else g
        work = np.empty((rb, B), dtype=dtype)
        wide = np.empty((rb, B)) if dtype != np.float64 and not single_sums else None
        signs = self._signs[acc.dtype.type]
        for j, start in enumerate(range(0, R, rb)):
            stop = min(start + rb, R)
            n = stop - start
            out = work[:n]
            fill(start, stop, out)
            if wide is not None:
                wide[:n] = out
                out = wide[:n]
            st.csc_matvecs(K, n, B, self._indptr[:n + 1], self._incidence[2 * start:2 * stop],
                           signs[:2 * n], out.ravel(), acc.ravel())
            if single_sums and ((j + 1) % FLUSH_BLOCKS == 0 or stop == R):
                g += acc
                acc[...] = 0.0
        return g

    def gradient(self, x, cols=None):
        """Gradients (P, B) at ``x`` (P, B), or at one shared column ``x`` (P, 1); ``cols``: the
        rounds of ``x``'s columns (P, len(cols)) when only some are wanted (their counts are
        picked block by block: a few rounds cost a few rounds' work and one read of the counts).

        Single precision (when ``single`` and the scores span less than 80, so no strength
        underflows) for the per-row arithmetic; the compiled loops sum in double precision, the
        numpy blocks in single precision over ``FLUSH_BLOCKS`` blocks,
        which are added in double precision: a row's term is exact to ~1e-7 of its count, an
        item's partial sum (a few dozen terms, see :meth:`row_order`) to ~1e-6, and a gradient
        to ~1e-5, which moves a round's optimum by ~1e-7 of a score (the stopping tolerance is
        1e-6).  The first gradient at a shared point ``x0`` (the full-data optimum, where a
        bootstrap starts) is kept with each row's probability ``p0`` there; a later gradient is
        that one plus the sums of ``n (p - p0)`` (a subtraction of floats a cell instead of the
        wins' conversion from integers)."""
        obj = self.obj
        K = obj.layout.K
        s = np.ascontiguousarray(x[:K])
        # all rounds at one point: a probability per row
        shared = cols is None and s.shape[1] == 1 and self.B > 1
        B = s.shape[1] if cols is not None else self.B
        shift = s - np.max(s, axis=0)
        single = self.single and float(-np.min(shift)) < 80.0
        dtype = np.float32 if single else np.float64
        base = self._base if self._base is not None and self._base[0].dtype == dtype else None

        p0 = self._p0(shift, dtype) if shared else None
        if self._compiled():
            g = self._compiled_sums(shift, dtype, p0, base, cols, B)
        else:
            g = self._numpy_sums(shift, dtype, p0, base, cols, B)
        if shared and self._base is None:
            self._base = (p0, g.copy())
        elif not shared and base is not None:
            g += base[1] if cols is None else base[1][:, cols]
        if self.scale != 1.0:
            g /= self.scale
        full = np.zeros((obj.layout.size, B))
        full[:K] = g + obj.l2 * s
        return full

    def _p0(self, shift, dtype):
        """Each row's probability at a shared point (``shift``: its scores, (K, 1))."""
        pi = np.exp(shift[:, 0])
        return (pi[self.first] / (pi[self.first] + pi[self.second])).astype(dtype)[:, None]

    def _compiled(self) -> bool:
        """Whether the compiled loops (:mod:`rm.choice.kernels`) take this pass."""
        if not COMPILED:
            return False
        from . import kernels

        return kernels.NUMBA and self.totals.dtype.kind == "u" and self.wins.dtype.kind == "u"

    def _compiled_sums(self, shift, dtype, p0, base, cols, B):
        """The passes' row sums (K, B) by the compiled loops, in double precision; ``p0``: the
        rows' probabilities when every round is at one point (else None)."""
        from . import kernels

        K = self.obj.layout.K
        g = np.zeros((K, B))
        if p0 is not None:
            kernels.shared_rows(self.first, self.second, p0[:, 0], self.totals, self.wins, g)
            return g
        pi = np.ascontiguousarray(np.exp(shift).astype(dtype))
        p0 = base[0][:, 0] if base is not None else np.zeros(self.obj.R, dtype=dtype)  # read only from a base
        if cols is None:
            kernels.rows_at(self.first, self.second, pi, p0, self.totals, self.wins, base is not None, g)
        else:
            kernels.rows_at_cols(self.first, self.second, pi, p0, self.totals, self.wins, base is not None,
                                 np.asarray(cols, dtype=np.int64), g)
        return g

    def _numpy_sums(self, shift, dtype, p0, base, cols, B):
        """The passes' row sums (K, B) in numpy, block by block (see :meth:`_row_sums`)."""
        first, second = self.first, self.second
        shared = p0 is not None

        def counts(matrix, start, stop):
            block = matrix[start:stop]
            return block if cols is None else block[:, cols]

        if shared:
            def residual(start, stop, out):  # n p - w
                np.multiply(self.totals[start:stop], p0[start:stop], out=out)
                out -= self.wins[start:stop]
        else:
            pi = np.exp(shift).astype(dtype)
            other = np.empty((self.block, B), dtype=dtype)

            def residual(start, stop, out):  # n p - w, or n (p - p0) from the base point
                o2 = other[:stop - start]
                np.take(pi, first[start:stop], axis=0, out=out)
                np.take(pi, second[start:stop], axis=0, out=o2)
                o2 += out
                out /= o2  # p = pi_i / (pi_i + pi_j)
                if base is not None:
                    out -= base[0][start:stop]
                    out *= counts(self.totals, start, stop)
                else:
                    out *= counts(self.totals, start, stop)
                    out -= counts(self.wins, start, stop)
        return self._row_sums(residual, dtype, small=base is not None and not shared, B=B)


RATE_MARGIN = 1.5
FEW_ROUNDS = 0.75  # share of a batch's rounds left from which only theirs are computed
# a step this share of the tolerance ends a round: the floor that single-precision gradients
# set (~1e-7 of a score), where measured rates are noise
FLOOR_SHARE = 0.2


def chord_batch(obj: Objective, phi_hat, counts, solve, *, tol=1e-7, max_iter=60, depth=5,
                ftol: float | None = None, fscale: float = 1.0):
    """Solve all bootstrap rounds at once: chord-Newton steps with Anderson acceleration.

    Each round's fixed-point map is ``x -> x - H0^-1 grad_b(x)`` with ``H0`` the full-data
    Hessian at the full-data optimum ``phi_hat`` (the warm start); Anderson mixing of the last
    ``depth`` steps (Walker & Ni 2011) turns the linear convergence of the chord method into a
    few iterations.  ``counts``: tuple of (R, B) count matrices; ``solve(G)`` applies ``H0^-1``
    to a (P, B) matrix; or ``counts`` a :class:`PlainRounds`.  Returns ``(phi (P, B),
    converged (B,))``.

    Stopping: a plain chord step leaves ``J e`` of an error ``e`` (``J = I - H0^-1 H_b``), so
    after a step ``r`` the error left is at most ``rho / (1 - rho) |r|`` for a contraction
    ``rho``, measured per round along each move ``dx`` as ``|dx + dr| / |dx|`` (max norms;
    the largest so far, times ``RATE_MARGIN``).  A round is done at the first step after which
    that bound is below ``tol`` in every coordinate *and* the objective gap left below ``ftol *
    max(1, fscale)`` (the bound squared times half the chord Newton decrement ``g' H0^-1 g``;
    ``fscale``: the size of the objective; None: no gap test) - the fit's own tolerance - or
    whose step is below ``FLOOR_SHARE * tol`` (the floor of single-precision gradients); its
    point after that step is its answer.  Against independent refits (648 rounds of 108 small
    problems, where rounds contract least) the worst error was 0.8e-6 (0.9e-6 in single
    precision) for ``tol=1e-6``.
    """
    if isinstance(counts, PlainRounds):
        B, gradient = counts.B, counts.gradient
    else:
        B = counts[0].shape[1]
        prepared = obj.outcome.prepare_counts(counts)

        def gradient(x):
            return obj.gradient_batch(x, prepared, prepared=True)
    x = phi_hat[:, None]  # one shared column until the first step
    free = obj.free_mask()
    lower = _bounds(obj)
    converged = np.zeros(B, dtype=bool)
    final = np.zeros((len(phi_hat), B))  # the rounds' answers, from the step they converged at
    dX, dR = [], []
    x_prev = r_prev = None
    top_rate = np.zeros(B)  # the largest contraction measured so far
    for step_no in range(max_iter):
        left_over = np.flatnonzero(~converged)
        if (isinstance(counts, PlainRounds) and x.shape[1] == B
                and len(left_over) <= FEW_ROUNDS * B):
            # a few rounds left: only their gradients (the others' steps are zero)
            G = np.zeros((len(phi_hat), B))
            G[:, left_over] = counts.gradient(x[:, left_over], cols=left_over)
        else:
            G = gradient(x)
        G[~free] = 0.0
        r = -solve(G)
        r[~free] = 0.0
        size = np.max(np.abs(r), axis=0)
        finite = np.isfinite(size)
        decrement = -np.einsum("pb,pb->b", G, r)
        # the chord map x -> x + r(x) has Jacobian J = I - H0^-1 H_b: along the last move
        # dx, J dx = dx + dr; its size against dx's is the contraction a plain chord step
        # achieves (the step that ends a round) in that direction: the largest measured so far
        # bounds the contraction of the error left (whose direction is not known)
        if x_prev is not None:
            dx = np.max(np.abs(x - x_prev), axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                measured = np.max(np.abs((x - x_prev) + (r - r_prev)), axis=0) / dx
            measured = np.where(np.isfinite(measured), measured, 1.0)
            top_rate = np.maximum(measured, top_rate)
        # (times RATE_MARGIN: in tests the error's direction contracted up to 1.25 times less)
        rate = np.ones(B) if x_prev is None else RATE_MARGIN * top_rate
        # the error left after this step: at most rate / (1 - rate) of it; a step below
        # FLOOR_SHARE of the tolerance is at the floor of the gradients' rounding, where the
        # measured rates are noise
        rate = np.minimum(rate, 0.95)
        left = rate / (1.0 - rate)
        now = finite & ((left * size < tol) | (size < FLOOR_SHARE * tol))
        if ftol is not None:
            now &= left * left * 0.5 * decrement <= ftol * max(1.0, abs(fscale))
        # a round is done at the first step that meets the test: its point after that step is
        # its answer (later steps of the batch would only move it by rounding noise)
        newly = now & ~converged
        if newly.any():
            final[:, newly] = np.broadcast_to(x, final.shape)[:, newly] + r[:, newly]
            converged |= newly
        if np.all(converged | ~finite):
            break
        if x.shape[1] != B:
            x = np.repeat(x, B, axis=1)
        r = np.where(finite, r, 0.0)
        if x_prev is not None:
            dX.append(x - x_prev)
            dR.append(r - r_prev)
            if len(dX) > depth:
                dX.pop(0)
                dR.pop(0)
        x_prev, r_prev = x, r
        if dR:
            Rm = np.stack(dR, axis=0)  # (m, P, B)
            A = np.einsum("ipb,jpb->bij", Rm, Rm)
            rhs = np.einsum("ipb,pb->bi", Rm, r)
            m = len(dR)
            A += 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None] * np.eye(m) / m + 1e-300 * np.eye(m)
            try:
                gamma = np.linalg.solve(A, rhs[..., None])[..., 0]  # (B, m)
            except np.linalg.LinAlgError:
                gamma = np.zeros((B, m))
            gamma = np.where(np.isfinite(gamma), gamma, 0.0)
            Xm = np.stack(dX, axis=0)
            x = x + r - np.einsum("ipb,bi->pb", Xm + Rm, gamma)
        else:
            x = x + r
        if lower is not None:
            li, lo = lower
            x[li] = np.maximum(x[li], lo[:, None] + 1e-8)
    x = np.where(converged, final, x)
    ok = converged & np.all(np.isfinite(x), axis=0) & (np.max(np.abs(x), axis=0) < 60)
    return x, ok
