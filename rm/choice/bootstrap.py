"""Poisson bootstrap of aggregated pair counts.

Resampling comparisons with independent Poisson(1) weights (Hanley & MacGibbon 2006; the
"Poisson bootstrap" of Chamandy et al. 2012) makes the count of each (row, outcome) cell an
independent Poisson(count) draw, so a bootstrap round never touches the raw comparisons.

Draws use exact inverse-CDF tables, in two levels: a uniform byte (eight from each raw 64-bit
output of the generator) picks one of 256 buckets of the Poisson CDF, which settles the draw
unless the bucket straddles a CDF step (a few buckets in a hundred: ``bytes.translate`` maps
the bytes through a 256-entry table); a straddling bucket takes a second uniform byte, and the
16-bit bucket settles the draw unless it, too, straddles a step (about one in 10^4 of those),
which a fresh 53-bit uniform resolves.  So the draws are exact Poisson, at well under a
nanosecond each.  Cells are grouped by mean so each group reads one table row, and the draws
can be kept as one-byte integers (a mean of at most 32 draws at most 177).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import poisson

TABLE_MAX_MEAN = 32
_FLAG = np.uint8(0xFF)  # the largest table entry is 177 (mean 32)


@lru_cache(maxsize=1)
def _tables():
    u = np.arange(65536, dtype=np.float64)
    table = np.empty((TABLE_MAX_MEAN + 1, 65536), dtype=np.uint8)
    cdfs = []
    for lam in range(TABLE_MAX_MEAN + 1):
        kmax = int(lam + 20 * np.sqrt(lam + 1) + 30)
        cdf = poisson.cdf(np.arange(kmax + 1), lam) if lam else np.ones(kmax + 1)
        cdf[-1] = 1.0
        cdfs.append(cdf)
        lo = np.searchsorted(cdf, u / 65536.0, side="right")
        hi = np.searchsorted(cdf, (u + 1.0) / 65536.0, side="left")
        table[lam] = np.where(lo == hi, lo, _FLAG).astype(np.uint8)
    return table, cdfs


@lru_cache(maxsize=1)
def _byte_tables() -> list[bytes]:
    """For each mean, the 256-entry table of the first level: bucket ``h`` (16-bit values
    ``256 h`` to ``256 h + 255``) maps to the draw when the 16-bit table has one draw for all
    of them, else to ``_FLAG``."""
    table, _ = _tables()
    out = []
    for row in table.reshape(TABLE_MAX_MEAN + 1, 256, 256):
        settled = (row.min(axis=1) == row.max(axis=1)) & (row[:, 0] != _FLAG)
        out.append(np.where(settled, row[:, 0], _FLAG).astype(np.uint8).tobytes())
    return out


def _uniform_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniform bytes: eight from each raw 64-bit output of the generator."""
    return rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n]


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
    first_level = _byte_tables()
    order, edges, big = poisson_plan(counts) if plan is None else plan
    for value in range(1, TABLE_MAX_MEAN + 1):
        rows = order[edges[value]:edges[value + 1]]
        if not len(rows):
            continue
        high = _uniform_bytes(rng, len(rows) * n_rounds)
        draws = np.frombuffer(high.tobytes().translate(first_level[value]), dtype=np.uint8)
        out[rows] = draws.reshape(len(rows), n_rounds)
        flagged = np.flatnonzero(draws == _FLAG)
        if len(flagged):
            # the byte's bucket straddles a CDF step: a second byte picks the 16-bit bucket
            u = high[flagged].astype(np.uint16) << 8
            u |= _uniform_bytes(rng, len(flagged))
            exact = table[value][u]
            straddle = np.flatnonzero(exact == _FLAG)
            if len(straddle):
                # the 16-bit bucket straddles a step too: a fresh 53-bit uniform inside it
                v = (u[straddle] + rng.random(len(straddle))) / 65536.0
                exact[straddle] = np.searchsorted(cdfs[value], v, side="right")
            out[rows[flagged // n_rounds], flagged % n_rounds] = exact
    if len(big):
        out[big] = rng.poisson(lam[big][:, None], size=(len(big), n_rounds))
    return out
