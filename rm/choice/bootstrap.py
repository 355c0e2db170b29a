"""Poisson bootstrap of aggregated pair counts.

Resampling comparisons with independent Poisson(1) weights (Hanley & MacGibbon 2006; the
"Poisson bootstrap" of Chamandy et al. 2012) makes the count of each (row, outcome) cell an
independent Poisson(count) draw, so a bootstrap round never touches the raw comparisons.

Draws use an exact inverse-CDF table: a 16-bit uniform (four from each raw 64-bit output of
the generator) picks a bucket of the Poisson CDF; the rare buckets that straddle a CDF step
(about one in 10^4) are resolved with a fresh 53-bit uniform, so the draws are exact Poisson,
at one or two nanoseconds each.  Cells are grouped by mean so each group reads one 64 KB table
row, and the draws can be kept as one-byte integers (a mean of at most 32 draws at most 177).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import poisson

TABLE_MAX_MEAN = 32
LOOKUP_CHUNK = 131_072  # draws a table lookup of poisson_counts
_FLAG = np.uint8(0xFF)  # the largest table entry is 177 (mean 32)


def max_draw(mean: float) -> int:
    """The largest count :func:`poisson_counts` can draw for an integral mean up to
    ``TABLE_MAX_MEAN`` (the end of that mean's table)."""
    return int(mean + 20 * np.sqrt(mean + 1) + 30)


@lru_cache(maxsize=1)
def _tables():
    u = np.arange(65536, dtype=np.float64)
    table = np.empty((TABLE_MAX_MEAN + 1, 65536), dtype=np.uint8)
    cdfs = []
    for lam in range(TABLE_MAX_MEAN + 1):
        kmax = max_draw(lam)
        cdf = poisson.cdf(np.arange(kmax + 1), lam) if lam else np.ones(kmax + 1)
        cdf[-1] = 1.0
        cdfs.append(cdf)
        lo = np.searchsorted(cdf, u / 65536.0, side="right")
        hi = np.searchsorted(cdf, (u + 1.0) / 65536.0, side="left")
        table[lam] = np.where(lo == hi, lo, _FLAG).astype(np.uint8)
    return table, cdfs


def _uniform16(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniform 16-bit integers: four from each raw 64-bit output of the generator."""
    return rng.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]


def poisson_plan(counts: np.ndarray):
    """The grouping of cells by mean that :func:`poisson_counts` uses: ``(order, edges, big)``
    (cells sorted by integral mean up to 32, where each mean's run starts, and the other cells).
    Computed once for draws of many batches of rounds from the same counts."""
    lam = np.asarray(counts)
    table_ok = (lam > 0) & (lam == np.round(lam)) & (lam <= TABLE_MAX_MEAN)
    lam_int = np.where(table_ok, lam, 0).astype(np.uint8)  # at most 32: a radix sort below
    order = np.argsort(lam_int, kind="stable")
    edges = np.searchsorted(lam_int[order], np.arange(TABLE_MAX_MEAN + 2))
    big = np.flatnonzero((lam > 0) & ~table_ok)
    return order, edges, big


def poisson_counts(counts: np.ndarray, n_rounds: int, rng: np.random.Generator,
                   dtype=np.float64, plan=None) -> np.ndarray:
    """Draw ``Poisson(counts[i])`` for every cell and round: returns ``(len(counts), n_rounds)``
    of ``dtype`` (a small integer type keeps the draws compact: 1-2 bytes a cell).

    Cells are grouped by their (integral, at most 32) mean, so each group reads one 64 KB row of
    the inverse-CDF table; other means use ``rng.poisson``.  ``plan``: that grouping from
    :func:`poisson_plan` (computed here when None).
    """
    counts = np.asarray(counts)
    n_rounds = int(n_rounds)
    out = np.zeros((len(counts), n_rounds), dtype=dtype)
    lam = counts
    table, cdfs = _tables()
    order, edges, big = poisson_plan(counts) if plan is None else plan
    out_rows = (out.view(np.dtype((np.void, n_rounds))).reshape(len(counts))
                if out.dtype == np.uint8 and n_rounds else None)
    for value in range(1, TABLE_MAX_MEAN + 1):
        rows = order[edges[value]:edges[value + 1]]
        if not len(rows):
            continue
        u = _uniform16(rng, len(rows) * n_rounds)
        # the lookup in chunks: numpy widens the 16-bit indices to 64 bits first, and a chunk's
        # widened copy stays in the cache (twice as fast as one lookup of millions)
        draws = np.empty(len(u), dtype=np.uint8)
        for c in range(0, len(u), LOOKUP_CHUNK):
            np.take(table[value], u[c:c + LOOKUP_CHUNK], out=draws[c:c + LOOKUP_CHUNK])
        flagged = np.flatnonzero(draws == _FLAG)
        if len(flagged):
            # the 16-bit bucket straddles a CDF step: place a fresh 53-bit uniform inside it
            exact = (u[flagged] + rng.random(len(flagged))) / 65536.0
            draws[flagged] = np.searchsorted(cdfs[value], exact, side="right")
        if out_rows is not None:  # one-byte draws: each row one item of B bytes (np.put: 3x faster)
            np.put(out_rows, rows, draws.view(out_rows.dtype))
        else:
            out[rows] = draws.reshape(len(rows), n_rounds)
    if len(big):
        out[big] = rng.poisson(lam[big][:, None], size=(len(big), n_rounds))
    return out
