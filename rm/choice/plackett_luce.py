"""Plackett-Luce for rankings and best-of-k choices.

A ranking ``r_1 > r_2 > ... > r_t`` of the items offered in one choice set ``C`` has probability
(Plackett 1975, eq. 1; Luce 1959)

    P = prod_{k=1..t} exp(s_{r_k}) / sum_{u in C \\ {r_1..r_{k-1}}} exp(s_u)

A full ranking has ``t = |C| - 1`` informative stages, a top-t partial ranking ``t`` stages and a
best-of-k choice one stage.  Pairwise comparisons are rankings of two items, so Plackett-Luce on
pairs is Bradley-Terry.

All observations are flattened into one array of (observation, position, item); the stage
denominators are reverse cumulative sums within each observation, gradients and Hessian-vector
products forward cumulative sums, so one pass costs O(total ranked items).  Newton with the
dense Hessian (all pairs within an observation) is used for up to ``dense_limit`` items,
Newton-CG with Hessian-vector products beyond.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import norm

from . import solvers
from .data import NoFiniteMLEError, as_frame, save_npz_atomically


class _Rankings:
    def __init__(self, items, elem_item, obs_start, obs_len, n_stages):
        self.items = items
        self.elem_item = elem_item  # (L,) item code of each element
        L = len(elem_item)
        self.L = L
        self.obs_start = obs_start
        self.obs_len = obs_len
        obs_of = np.repeat(np.arange(len(obs_start)), obs_len)
        self.obs_of = obs_of
        self.pos = np.arange(L) - obs_start[obs_of]
        self.is_stage = self.pos < n_stages[obs_of]
        self.end = (obs_start + obs_len)[obs_of]  # exclusive end of each element's observation
        self.start = obs_start[obs_of]
        self.n_obs = len(obs_start)

    def rev_cumsum(self, x):
        """Sum of ``x`` from each element to the end of its observation."""
        rc = np.cumsum(x[::-1], axis=0)[::-1]
        tail = np.concatenate([rc, np.zeros((1,) + x.shape[1:])])[self.end]
        return rc - tail

    def fwd_cumsum(self, x):
        """Sum of ``x`` from the start of its observation up to each element (inclusive)."""
        c = np.cumsum(x, axis=0)
        head = np.concatenate([np.zeros((1,) + x.shape[1:]), c])[self.start]
        return c - head


def _parse(frame: pl.DataFrame, ranking: str, choice_set: str | None, items=None):
    if ranking not in frame.columns:
        raise ValueError(f"missing column {ranking!r}; the table has {frame.columns}")
    if not isinstance(frame[ranking].dtype, pl.List):
        raise ValueError(f"column {ranking!r} must be a list of items (best first)")
    ranked = frame[ranking].to_list()
    offered = frame[choice_set].to_list() if choice_set else [None] * len(ranked)
    seqs, n_stages = [], []
    for row, (r, c) in enumerate(zip(ranked, offered)):
        if r is None or len(r) == 0:
            raise ValueError(f"row {row}: empty ranking")
        if any(x is None for x in r):
            raise ValueError(f"row {row}: null item in the ranking")
        if len(set(r)) != len(r):
            raise ValueError(f"row {row}: an item appears twice in the ranking {r!r}")
        rest = []
        if c is not None:
            missing = set(r) - set(c)
            if missing:
                raise ValueError(f"row {row}: ranked item(s) {sorted(map(str, missing))} not in "
                                 "the choice set")
            rs = set(r)
            rest = [x for x in dict.fromkeys(c) if x not in rs]
        seq = list(r) + rest
        if len(seq) < 2:
            raise ValueError(f"row {row}: a choice needs at least two items, got {seq!r}")
        seqs.append(seq)
        n_stages.append(min(len(r), len(seq) - 1))
    flat = [x for seq in seqs for x in seq]
    if items is None:
        items = sorted(set(flat), key=lambda v: (str(type(v)), v))
    lookup = {v: i for i, v in enumerate(items)}
    try:
        codes = np.array([lookup[x] for x in flat], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"unknown item {exc.args[0]!r}") from None
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    starts = np.zeros(len(seqs), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return _Rankings(items, codes, starts, lens, np.array(n_stages, dtype=np.int64))


class PlackettLuce:
    """Plackett-Luce scores from rankings (best first) or best-of-k choices.

    ``fit(data, ranking="ranking", choice_set=None)``: ``ranking`` is a list column (best
    first; one element = a best-of-k choice), ``choice_set`` an optional list column of all items
    offered (the unranked ones only enter the denominators).
    """

    def __init__(self, l2: float = 0.0, anchor=None, anchor_score: float = 0.0,
                 elo_base: float = 1000.0, confidence: float = 0.95, dense_limit: int = 3000,
                 tol: float = 1e-12, max_iter: int = 200):
        self.l2 = l2
        self.anchor = anchor
        self.anchor_score = anchor_score
        self.elo_base = elo_base
        self.confidence = confidence
        self.dense_limit = dense_limit
        self.tol = tol
        self.max_iter = max_iter

    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in ("l2", "anchor", "anchor_score", "elo_base",
                                               "confidence", "dense_limit", "tol", "max_iter")}

    # ------------------------------------------------------------------ objective
    def _value(self, s, R):
        x = s[R.elem_item]
        shift = np.max(x) if len(x) else 0.0
        e = np.exp(x - shift)
        D = R.rev_cumsum(e)
        st = R.is_stage
        ll = float(np.sum(x[st] - shift - np.log(D[st])))
        return -ll + 0.5 * self.l2 * float(s @ s), ll, e, D

    def _grad(self, s, R, e, D):
        K = len(s)
        st = R.is_stage
        inv = np.where(st, 1.0 / D, 0.0)
        fc = R.fwd_cumsum(inv)
        g = -(np.bincount(R.elem_item, st.astype(float), K) - np.bincount(R.elem_item, e * fc, K))
        return g + self.l2 * s, fc, inv

    def _hessp(self, v, R, e, D, fc, inv):
        K = len(v)
        ev = e * v[R.elem_item]
        S = R.rev_cumsum(ev)
        fc2 = R.fwd_cumsum(inv * inv * S)
        out = e * v[R.elem_item] * fc - e * fc2
        return np.bincount(R.elem_item, out, K) + self.l2 * v

    def _dense_hessian(self, K, R, e, D, fc, inv, pairs):
        H = np.diag(np.bincount(R.elem_item, e * fc, K) + self.l2)
        fcsq = R.fwd_cumsum(inv * inv)
        iu, iv = pairs  # element indices, same observation, pos_u <= pos_v
        w = e[iu] * e[iv] * fcsq[iu]
        a, b = R.elem_item[iu], R.elem_item[iv]
        same = iu == iv
        off = np.bincount(a * K + b, np.where(same, w, w), K * K).reshape(K, K)
        H -= off + np.where(np.eye(K, dtype=bool), 0.0, off.T)
        return H

    @staticmethod
    def _pairs(R):
        """Element index pairs (u, v) in one observation with pos_u <= pos_v."""
        iu, iv = [], []
        for start, n in zip(R.obs_start, R.obs_len):
            a, b = np.triu_indices(int(n))
            iu.append(start + a)
            iv.append(start + b)
        return np.concatenate(iu), np.concatenate(iv)

    def _check_graph(self, R, pairs):
        K = len(R.items)
        iu, iv = pairs
        keep = (iu != iv) & R.is_stage[iu]
        src, dst = R.elem_item[iu[keep]], R.elem_item[iv[keep]]  # src ranked above dst
        g = coo_matrix((np.ones(len(src)), (src, dst)), shape=(K, K))
        n_weak, _ = connected_components(g, directed=False)
        n_strong, _ = connected_components(g, directed=True, connection="strong")
        if n_strong > 1:
            beaten = np.bincount(dst, minlength=K)
            top = np.flatnonzero(beaten == 0)
            names = ", ".join(str(R.items[i]) for i in top[:8])
            kind = "disconnected" if n_weak > 1 else "not strongly connected"
            raise NoFiniteMLEError(
                f"no finite maximum-likelihood scores: the ranking graph is {kind} "
                f"({n_weak} components, {n_strong} strongly connected components)"
                + (f"; items never ranked below another: {names}" if len(top) else "")
                + ". Pass l2=... (a Gaussian prior) to fit anyway.")

    # ------------------------------------------------------------------ fit
    def fit(self, data, ranking: str = "ranking", choice_set: str | None = None):
        frame, version_hash = as_frame(data)
        if frame.height == 0:
            raise ValueError("the rankings table is empty")
        R = _parse(frame, ranking, choice_set)
        K = len(R.items)
        n_pairs = int(np.sum(R.obs_len * (R.obs_len + 1) // 2))
        dense = K <= self.dense_limit and n_pairs <= 20_000_000
        pairs = self._pairs(R) if (dense or self.l2 == 0) and n_pairs <= 20_000_000 else None
        if self.l2 == 0 and pairs is not None:
            self._check_graph(R, pairs)
        anchor_idx = None
        if self.anchor is not None:
            if self.anchor not in R.items:
                raise ValueError(f"anchor item {self.anchor!r} is not among the fitted items")
            anchor_idx = R.items.index(self.anchor)
        ref = None if self.l2 > 0 else (anchor_idx if anchor_idx is not None else 0)
        free = np.ones(K, dtype=bool)
        if ref is not None:
            free[ref] = False
        s = np.zeros(K)
        value, ll, e, D = self._value(s, R)
        converged = False
        it = 0
        for it in range(1, self.max_iter + 1):
            g, fc, inv = self._grad(s, R, e, D)
            g = np.where(free, g, 0.0)
            if dense:
                H = self._dense_hessian(K, R, e, D, fc, inv, pairs)[np.ix_(free, free)]
                step = np.zeros(K)
                step[free], _ = solvers._solve_damped(H, -g[free])
            else:
                step = self._cg(s, R, e, D, fc, inv, -g, free)
            slope = float(g @ step)
            t = 1.0
            while t > 1e-12:
                cand = s + t * step
                v_new, ll_new, e_new, D_new = self._value(cand, R)
                if solvers._sufficient_decrease(v_new, value, t, slope):
                    break
                t *= 0.5
            else:
                break
            s, value, ll, e, D = cand, v_new, ll_new, e_new, D_new
            if -slope <= self.tol * max(1.0, abs(value)) or np.max(np.abs(t * step)) < 1e-12:
                converged = True
                break
        if not converged:
            warnings.warn("PlackettLuce: the solver stopped before meeting the tolerance",
                          RuntimeWarning, stacklevel=2)
        self.items_ = list(R.items)
        self.params_ = s
        self.log_likelihood_ = ll
        self.objective_ = value
        self.n_iter_ = it
        self.converged_ = converged
        self.fitted_on_ = version_hash
        self.n_observations_ = R.n_obs
        # scores and standard errors
        if anchor_idx is not None:
            scores = s - s[anchor_idx] + self.anchor_score
        elif ref is not None:
            scores = s - s.mean()
        else:
            scores = s
        g, fc, inv = self._grad(s, R, e, D)
        if dense:
            H = self._dense_hessian(K, R, e, D, fc, inv, pairs)[np.ix_(free, free)]
            C = np.zeros((K, K))
            factor = solvers.cholesky(H)
            C[np.ix_(free, free)] = solvers.cho_solve(factor, np.eye(int(free.sum())))
            if anchor_idx is not None:
                var = np.diag(C) + C[anchor_idx, anchor_idx] - 2 * C[:, anchor_idx]
            elif ref is not None:
                var = np.diag(C) - 2 * C.mean(axis=1) + C.mean()
            else:
                var = np.diag(C)
            self.std_error_method_ = "fisher"
        else:
            var = 1.0 / np.bincount(R.elem_item, e * fc, K)
            self.std_error_method_ = "conditional"
        se = np.sqrt(np.maximum(var, 0.0))
        z = norm.ppf(0.5 + self.confidence / 2)
        chosen = np.bincount(R.elem_item[R.pos == 0], minlength=K)
        appear = np.bincount(R.elem_item, minlength=K)
        base = self.anchor_score if anchor_idx is not None else 0.0
        table = pl.DataFrame({
            "item": R.items,
            "score": scores,
            "std_error": se,
            "ci_low": scores - z * se,
            "ci_high": scores + z * se,
            "elo": self.elo_base + 400.0 / math.log(10.0) * (scores - base),
            "appearances": appear.astype(np.int64),
            "first_place": chosen.astype(np.int64),
        }).sort("score", descending=True)
        self.scores_ = table.with_columns(pl.int_range(1, pl.len() + 1).alias("rank")).select(
            ["rank", *table.columns])
        return self

    def _cg(self, s, R, e, D, fc, inv, rhs, free):
        diag = np.bincount(R.elem_item, e * fc, len(s)) + self.l2
        diag = np.where(diag > 0, diag, 1.0)
        x = np.zeros_like(rhs)
        r = np.where(free, rhs, 0.0)
        z = r / diag
        p = z.copy()
        rz = r @ z
        target = 1e-12 * np.linalg.norm(r)
        for _ in range(2000):
            Ap = np.where(free, self._hessp(p, R, e, D, fc, inv), 0.0)
            alpha = rz / (p @ Ap)
            x += alpha * p
            r -= alpha * Ap
            if np.linalg.norm(r) <= target:
                break
            z = r / diag
            rz_new = r @ z
            p = z + (rz_new / rz) * p
            rz = rz_new
        return x

    def save(self, path):
        """Write the fitted model to one ``.npz`` file (atomic)."""
        import io
        import json
        from pathlib import Path

        if not hasattr(self, "params_"):
            raise RuntimeError("this PlackettLuce is not fitted yet; call fit() first")
        path = Path(path)
        buf = io.BytesIO()
        self.scores_.write_ipc(buf)
        meta = {"class": "PlackettLuce", "params": self.get_params(),
                "items": [str(x) for x in self.items_],
                "items_numeric": not isinstance(self.items_[0], str),
                "fitted_on": self.fitted_on_, "log_likelihood": self.log_likelihood_,
                "n_observations": self.n_observations_, "n_iter": self.n_iter_}
        return save_npz_atomically(path, params=self.params_,
                                   scores=np.frombuffer(buf.getvalue(), dtype=np.uint8),
                                   meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path):
        import io
        import json

        try:
            with np.load(path, allow_pickle=False) as z:
                files = {k: z[k] for k in z.files}
            meta = json.loads(files["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a saved PlackettLuce model: {exc}") from None
        if meta.get("class") != "PlackettLuce":
            raise ValueError(f"{path} is not a saved PlackettLuce model")
        model = cls(**meta["params"])
        model.params_ = files["params"]
        model.scores_ = pl.read_ipc(io.BytesIO(files["scores"].tobytes()))
        items = meta["items"]
        if meta["items_numeric"]:
            items = [int(x) if float(x).is_integer() else float(x) for x in items]
        model.items_ = items
        model.fitted_on_ = meta["fitted_on"]
        model.log_likelihood_ = meta["log_likelihood"]
        model.n_observations_ = meta["n_observations"]
        model.n_iter_ = meta["n_iter"]
        return model

    def predict_proba(self, choice_set) -> np.ndarray:
        """Probability that each item of ``choice_set`` is chosen first."""
        lookup = {v: i for i, v in enumerate(self.items_)}
        idx = np.array([lookup[v] for v in choice_set])
        x = self.params_[idx]
        e = np.exp(x - x.max())
        return e / e.sum()
