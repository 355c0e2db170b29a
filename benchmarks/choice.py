"""Benchmark: rm.choice Bradley-Terry against peers, side by side in one process.

Problems (binary outcomes, true scores ~ N(0, 1), random pairs):
  1. 1,000,000 comparisons over 1,000 items (maximum likelihood, no prior)
  2. 1,000,000 comparisons over 100,000 items (~20 comparisons an item: many items never lose,
     so every method that supports it fits the MAP with a N(0, 1) prior, l2 = 1)
  3. 100 bootstrap rounds on problem 1 (rm.choice: all rounds in one batch)

Peers: choix ILSR, evalica Bradley-Terry, crowd-kit BradleyTerry, scikit-learn
LogisticRegression on aggregated pairs (the older arena method) and scipy L-BFGS-B on
aggregated counts (the current arena method).

What each side is timed on (all built, outside any timing, from the same simulated
``winner``/``loser`` integer arrays):

* rm.choice (integer ids): ``BradleyTerry.fit`` on a polars frame with integer ``model_a`` /
  ``model_b`` columns and a string ``label`` column ("a"/"b"): decoding the labels, the
  aggregation to pairs, the identifiability check and the solve are timed - the scores, as the
  peers return.  The speed-up is quoted against this row: its input holds the same information
  as the peers' and needs more work (label strings).
* rm.choice (+ standard errors): the same plus the first read of ``scores_``, which computes
  the standard errors (Fisher information: a Cholesky factorization and the inverse's
  diagonal) and builds the table; no peer computes standard errors.
* rm.choice (item names): the fit with string item names (their encoding is timed too).
* choix: the ``(winner, loser)`` integer array; evalica: the winners' and losers' names (the
  ``Winner`` list it requires is built inside its timing); crowd-kit: a pandas frame built inside
  its timing (the input format it requires); sklearn and scipy: ``winner``/``loser`` arrays,
  with their aggregation to pairs (``np.unique``) inside their timing, as the arena code does.

Every method's scores are scored with the same log-likelihood (and objective, with the prior) on
the same data.  Peak memory is the peak RSS growth during the call (sampled every 5 ms).  Times
are the best of ``--repeat`` runs for calls under 5 s (the 2 cores are shared with other work,
so compare ratios from one run).  BLAS runs on one thread in rm.choice (threadpoolctl); the
peers run with the library defaults.

    python benchmarks/choice.py            # full size
    python benchmarks/choice.py --quick    # 100k comparisons: 200 and 10,000 items
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rm.choice import BradleyTerry  # noqa: E402


class TimeCap(Exception):
    pass


class Measure:
    """Wall time and peak RSS growth of a block; a time cap via SIGALRM."""

    def __init__(self, cap_s: float):
        self.cap_s = cap_s

    def __enter__(self):
        gc.collect()
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = False

        def sample():
            while not self.stop:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()

        def on_alarm(signum, frame):
            raise TimeCap(f"stopped at the {self.cap_s:.0f} s time cap")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.cap_s)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.peak_mb = (self.peak - self.base) / 2**20
        return False


def best_of(repeat: int, cap_s: float, fn, setup=None):
    """Run ``fn`` up to ``repeat`` times (only again while a run takes < 5 s), each after an
    untimed ``setup()`` when given; keep the fastest time and the largest peak memory."""
    best = None
    runs = 0
    for _ in range(repeat):
        if setup is not None:
            setup()
        with Measure(cap_s) as m:
            fn()
        runs += 1
        if best is None or m.seconds < best.seconds:
            peak = max(best.peak_mb, m.peak_mb) if best else m.peak_mb
            best = m
            best.peak_mb = peak
        else:
            best.peak_mb = max(best.peak_mb, m.peak_mb)
        if m.seconds > 5.0:
            break
    best.runs = runs
    return best


def make_problem(n_items: int, n_comparisons: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n_items)
    a = rng.integers(0, n_items, n_comparisons)
    b = (a + rng.integers(1, n_items, n_comparisons)) % n_items
    win_a = rng.random(n_comparisons) < 1.0 / (1.0 + np.exp(-(s[a] - s[b])))
    names = np.array([f"model-{i:06d}" for i in range(n_items)])
    frame = pl.DataFrame({"model_a": names[a], "model_b": names[b],
                          "label": np.where(win_a, "a", "b")})
    winner = np.where(win_a, a, b)
    loser = np.where(win_a, b, a)
    return frame, names, winner, loser


def aggregate_counts(winner, loser, K):
    """Unique (i, j) with i < j, wins of i and wins of j (numpy, for the arena-style peers)."""
    i, j = np.minimum(winner, loser), np.maximum(winner, loser)
    key = i.astype(np.int64) * K + j
    uniq, inv = np.unique(key, return_inverse=True)
    first_won = (winner == i).astype(float)
    w = np.bincount(inv, first_won, len(uniq))
    n = np.bincount(inv, minlength=len(uniq)).astype(float)
    return uniq // K, uniq % K, w, n - w


def loglik(scores, agg):
    i, j, w, lo = agg
    d = scores[i] - scores[j]
    return float(np.sum(-w * np.logaddexp(0, -d) - lo * np.logaddexp(0, d)))


# ---------------------------------------------------------------------- peers
def peer_choix(names, winner, loser, K, l2):
    import choix

    data = np.column_stack([winner, loser])
    return choix.ilsr_pairwise(K, data, alpha=0.0 if not l2 else 1e-3, tol=1e-8, max_iter=1000)


def peer_evalica(names, winner, loser, K, l2):
    import evalica

    xs, ys = names[winner], names[loser]
    winners = [evalica.Winner.X] * len(xs)
    res = evalica.bradley_terry(xs, ys, winners, tolerance=1e-8, limit=10_000)
    scores = res.scores.reindex(names).to_numpy()
    return np.log(scores)


def peer_crowdkit(names, winner, loser, K, l2):
    import pandas as pd
    from crowdkit.aggregation import BradleyTerry as CrowdKitBT

    df = pd.DataFrame({"worker": "w", "left": names[winner], "right": names[loser],
                       "label": names[winner]})
    scores = CrowdKitBT(n_iter=1000, tol=1e-8).fit_predict(df)
    return np.log(scores.reindex(names).to_numpy())


def peer_sklearn(names, winner, loser, K, l2):
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    i, j, w, lo = aggregate_counts(winner, loser, K)
    R = len(i)
    rows = np.repeat(np.arange(2 * R), 2)
    cols = np.column_stack([np.r_[i, i], np.r_[j, j]]).ravel()
    vals = np.tile([1.0, -1.0], 2 * R)
    X = csr_matrix((vals, (rows, cols)), shape=(2 * R, K))
    y = np.r_[np.ones(R), np.zeros(R)]
    sw = np.r_[w, lo]
    keep = sw > 0
    params = {"C": 1.0 / l2} if l2 else {"penalty": None} if _sklearn_has_penalty_none() else {"C": np.inf}
    model = LogisticRegression(fit_intercept=False, tol=1e-8, max_iter=10_000, **params)
    model.fit(X[keep], y[keep], sample_weight=sw[keep])
    return model.coef_[0]


def _sklearn_has_penalty_none():
    import sklearn

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    return (major, minor) < (1, 8)


def peer_scipy(names, winner, loser, K, l2):
    from scipy.optimize import minimize

    i, j, w, lo = aggregate_counts(winner, loser, K)
    n = w + lo

    def loss_and_grad(s):
        d = s[i] - s[j]
        p = 1.0 / (1.0 + np.exp(-d))
        loss = np.sum(w * np.logaddexp(0, -d) + lo * np.logaddexp(0, d)) + 0.5 * l2 * s @ s
        r = n * p - w
        g = np.bincount(i, r, K) - np.bincount(j, r, K) + l2 * s
        return loss, g

    res = minimize(loss_and_grad, np.zeros(K), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "gtol": 1e-8, "ftol": 1e-15})
    return res.x


PEERS = {
    "choix ILSR": peer_choix,
    "evalica": peer_evalica,
    "crowd-kit": peer_crowdkit,
    "sklearn LR (arena, older)": peer_sklearn,
    "scipy L-BFGS-B (arena)": peer_scipy,
}


# ---------------------------------------------------------------------- runner
def run_problem(title, K, n, l2, cap_s, skip=(), seed=0, repeat=3):
    print(f"\n== {title}: {n:,} comparisons over {K:,} items"
          + (f", Gaussian prior l2={l2}" if l2 else ", maximum likelihood") + " ==")
    frame, names, winner, loser = make_problem(K, n, seed)
    agg = aggregate_counts(winner, loser, K)
    rows = []
    model = BradleyTerry(ties="drop", l2=l2)
    BradleyTerry(ties="drop", l2=1.0).fit(frame.head(1000))  # warm-up (imports, first calls)
    m = best_of(repeat, cap_s, lambda: model.fit(frame))
    # our scores in the peers' item order
    order = model.scores_.select("item", "score")
    ours = dict(zip(order["item"].to_list(), order["score"].to_numpy()))
    s_ours = np.array([ours[x] for x in names])
    rows.append(("rm.choice (item names)", m.seconds, m.peak_mb, s_ours,
                 f"polars frame of names, best of {m.runs}"))
    fit_seconds = m.seconds
    # the same input the peers get: integer item ids
    codes = pl.DataFrame({"model_a": np.where(frame["label"] == "a", winner, loser),
                          "model_b": np.where(frame["label"] == "a", loser, winner),
                          "label": frame["label"]})
    model_ids = BradleyTerry(ties="drop", l2=l2)
    m = best_of(repeat, cap_s, lambda: model_ids.fit(codes))
    ids = model_ids.scores_.select("item", "score")
    s_ids = np.zeros(K)
    s_ids[ids["item"].to_numpy()] = ids["score"].to_numpy()
    rows.append(("rm.choice (integer ids)", m.seconds, m.peak_mb, s_ids,
                 f"same input as peers, best of {m.runs}"))
    m = best_of(repeat, cap_s, lambda: model_ids.fit(codes).scores_)
    rows.append(("rm.choice (+ standard errors)", m.seconds, m.peak_mb, s_ids,
                 f"fit and first read of scores_, best of {m.runs}"))
    for name, fn in PEERS.items():
        if name in skip:
            rows.append((name, None, None, None, skip[name]))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = {}

                def call():
                    out["s"] = fn(names, winner, loser, K, l2)

                m = best_of(repeat, cap_s, call)
            rows.append((name, m.seconds, m.peak_mb, np.asarray(out["s"], dtype=float),
                         f"best of {m.runs}" if m.runs > 1 else ""))
        except TimeCap as exc:
            rows.append((name, None, None, None, str(exc)))
        except MemoryError:
            rows.append((name, None, None, None, "ran out of memory (MemoryError)"))
        except Exception as exc:  # a peer failing is reported, not fatal
            rows.append((name, None, None, None, f"failed: {type(exc).__name__}: {str(exc)[:120]}"))
        gc.collect()
    best_peer = min((r[1] for r in rows[3:] if r[1] is not None), default=None)
    print(f"{'method':28s} {'seconds':>9s} {'x ours':>8s} {'peak MB':>9s} {'log-lik':>16s} "
          f"{'objective':>16s}  note")
    for name, sec, mb, s, note in rows:
        if sec is None:
            print(f"{name:28s} {'-':>9s} {'-':>8s} {'-':>9s} {'-':>16s} {'-':>16s}  {note}")
            continue
        if s is not None and np.all(np.isfinite(s)):
            ll = loglik(s, agg)
            obj = -ll + 0.5 * l2 * float(s @ s)
            ll_s, obj_s = f"{ll:16.4f}", f"{obj:16.4f}"
        else:
            ll_s = obj_s = f"{'non-finite':>16s}"
        ratio = sec / rows[1][1]
        print(f"{name:28s} {sec:9.3f} {ratio:8.1f} {mb:9.0f} {ll_s} {obj_s}  {note}")
    if best_peer is not None:
        print(f"speed-up over the fastest peer: {best_peer / rows[1][1]:.1f}x from integer ids "
              f"(the peers' input), {best_peer / rows[2][1]:.1f}x with standard errors, "
              f"{best_peer / rows[0][1]:.1f}x from item names")
    return model, fit_seconds, frame


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller problem (100k comparisons)")
    parser.add_argument("--cap", type=float, default=120.0, help="time cap per peer call (s)")
    parser.add_argument("--rounds", type=int, default=100, help="bootstrap rounds")
    parser.add_argument("--repeat", type=int, default=3,
                        help="best of this many runs for calls under 5 s (the machine is shared)")
    parser.add_argument("--only", choices=("1k", "100k", "bootstrap"), action="append",
                        help="run only these parts (repeatable)")
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else 1_000_000
    k_small, k_large = (200, 10_000) if args.quick else (1_000, 100_000)
    parts = set(args.only or ("1k", "100k", "bootstrap"))
    print(f"rm.choice benchmark on {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    model = None
    if "1k" in parts or "bootstrap" in parts:
        model, fit_seconds, frame1 = run_problem("problem 1", k_small, n, 0.0, args.cap,
                                                 repeat=args.repeat)
    if "bootstrap" in parts:
        # the fit is timed again next to the bootstrap, so both see the same machine load
        refit = best_of(args.repeat, args.cap, lambda: model.fit(frame1))
        fit_seconds = min(fit_seconds, refit.seconds)
        print(f"\n== problem 3: {args.rounds} bootstrap rounds on problem 1 "
              f"(one fit from names: {fit_seconds:.3f} s, best of both timings; each bootstrap "
              f"follows a fresh fit, so its time includes the Hessian's factorization) ==")
        for method in ("exact", "one-step"):
            # each after an untimed fresh fit: the standard errors are not computed yet
            m = best_of(args.repeat, args.cap * 5,
                        lambda: model.bootstrap(args.rounds, seed=0, method=method),
                        setup=lambda: model.fit(frame1))
            se = model.scores_["std_error"].to_numpy()
            bse = model.scores_["bootstrap_std_error"].to_numpy()
            print(f"rm.choice bootstrap ({method:8s}): {m.seconds:.3f} s = "
                  f"{m.seconds / fit_seconds:.1f}x one fit, peak {m.peak_mb:.0f} MB, failed rounds "
                  f"{model.bootstrap_failed_}, median bootstrap/Fisher SE {np.median(bse / se):.3f}")
    if "100k" in parts:
        # evalica builds dense K x K matrices in Rust (80 GB at 100k items), and a failed
        # allocation there aborts the process instead of raising MemoryError
        skip = {}
        if k_large > 30_000:
            gb = k_large**2 * 8 / 2**30
            skip = {"evalica": f"skipped: needs dense {k_large:,} x {k_large:,} matrices ({gb:.0f} GB)"}
        run_problem("problem 2", k_large, n, 1.0, args.cap, skip=skip, repeat=args.repeat)


if __name__ == "__main__":
    main()
