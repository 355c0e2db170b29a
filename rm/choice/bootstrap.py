"""Poisson bootstrap of aggregated pair counts.

Resampling comparisons with independent Poisson(1) weights (Hanley & MacGibbon 2006; the
"Poisson bootstrap" of Chamandy et al. 2012) makes the count of each (row, outcome) cell an
independent Poisson(count) draw, so a bootstrap round never touches the raw comparisons.

Draws use an exact inverse-CDF table: a 16-bit uniform picks a bucket of the Poisson CDF; the
rare buckets that straddle a CDF step (about one in 10^4) are resolved with a fresh 53-bit
uniform, so the draws are exact Poisson, at about one nanosecond each.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import poisson

TABLE_MAX_MEAN = 32
_FLAG = np.uint16(0xFFFF)


@lru_cache(maxsize=1)
def _tables():
    u = np.arange(65536, dtype=np.float64)
    table = np.empty((TABLE_MAX_MEAN + 1, 65536), dtype=np.uint16)
    cdfs = []
    for lam in range(TABLE_MAX_MEAN + 1):
        kmax = int(lam + 20 * np.sqrt(lam + 1) + 30)
        cdf = poisson.cdf(np.arange(kmax + 1), lam) if lam else np.ones(kmax + 1)
        cdf[-1] = 1.0
        cdfs.append(cdf)
        lo = np.searchsorted(cdf, u / 65536.0, side="right")
        hi = np.searchsorted(cdf, (u + 1.0) / 65536.0, side="left")
        row = np.where(lo == hi, lo, _FLAG).astype(np.uint16)
        table[lam] = row
    return table, cdfs


def poisson_counts(counts: np.ndarray, n_rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``Poisson(counts[i])`` for every cell and round: returns ``(len(counts), n_rounds)``."""
    counts = np.asarray(counts)
    nz = np.flatnonzero(counts > 0)
    if not len(nz):
        return np.zeros((len(counts), n_rounds))
    lam = counts[nz]
    integral = lam == np.round(lam)
    small = integral & (lam <= TABLE_MAX_MEAN)
    table, cdfs = _tables()
    idx_small = nz[small]
    all_small = len(idx_small) == len(counts)
    out = None if all_small else np.zeros((len(counts), n_rounds), dtype=np.float64)
    if len(idx_small):
        lam_i = lam[small].astype(np.intp)
        u = rng.integers(0, 65536, size=(len(idx_small), n_rounds), dtype=np.uint16)
        draws = table[lam_i[:, None], u]
        flagged = np.flatnonzero(draws.ravel() == _FLAG)
        if len(flagged):
            rows, cols = np.divmod(flagged, n_rounds)
            exact = (u[rows, cols] + rng.random(len(rows))) / 65536.0
            lam_f = lam_i[rows]
            vals = np.empty(len(rows), dtype=np.uint16)
            for lv in np.unique(lam_f):
                sel = lam_f == lv
                vals[sel] = np.searchsorted(cdfs[lv], exact[sel], side="right")
            draws[rows, cols] = vals
        if all_small:
            return draws.astype(np.float64)
        out[idx_small] = draws
    idx_big = nz[~small]
    if len(idx_big):
        out[idx_big] = rng.poisson(lam[~small][:, None], size=(len(idx_big), n_rounds))
    return out
