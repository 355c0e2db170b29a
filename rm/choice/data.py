"""From a comparisons table to aggregated pair counts.

A fit never loops over comparisons: the table is reduced once to one row per distinct
``(first item, second item, display side, annotator, covariate values)`` with the counts of the
four outcomes.  Items are put in a canonical order (``first < second``); a swapped comparison has
its outcome, display side and covariates flipped.  Memory is O(comparisons + items).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

LABELS = ("a", "b", "tie", "both_bad")
OUTCOME_FIRST, OUTCOME_SECOND, OUTCOME_TIE, OUTCOME_BOTH_BAD = range(4)
UNKNOWN_ANNOTATOR = "(unknown)"


class NoFiniteMLEError(ValueError):
    """The comparison graph does not pin the scores down (and no prior was given)."""


def as_frame(data) -> tuple[pl.DataFrame, str | None]:
    """Return ``(polars frame, version hash or None)`` for a Version, polars or pandas frame."""
    version_hash = getattr(data, "hash", None)
    if isinstance(data, pl.LazyFrame):
        data = data.collect()
    if isinstance(data, pl.DataFrame):
        return data, None
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return pl.from_pandas(data), None
    except ImportError:  # pragma: no cover
        pass
    if hasattr(data, "to_polars"):
        frame = data.to_polars()
        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        return frame, (str(version_hash) if version_hash is not None else None)
    if type(data).__name__ == "Dataset":
        try:  # a Hugging Face datasets.Dataset, via the workbench's converter
            from workbench.frames import as_comparisons

            return as_comparisons(data), None
        except (ImportError, TypeError):
            pass
    raise TypeError(
        "expected a workbench Version (with .to_polars()), a polars or a pandas DataFrame, "
        f"got {type(data).__name__}"
    )


def _require_columns(frame: pl.DataFrame, columns) -> None:
    missing = [c for c in columns if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the table has {frame.columns}")


def _first_bad(frame: pl.DataFrame, mask: pl.Series, column: str) -> str:
    idx = int(mask.arg_true()[0])
    return f"row {idx} ({column}={frame[column][idx]!r}), {int(mask.sum())} bad row(s) in all"


def item_codes(frame: pl.DataFrame, item_a: str, item_b: str, items=None, *,
               presence: bool = True):
    """Integer codes of both item columns and the sorted item labels.

    ``presence=False``: for integer ids in ``0 .. K-1`` (small enough), return the ids as codes
    and ``K`` in place of the labels, without checking which ids occur (a pass over both
    columns); the caller checks that on its aggregated rows (see :func:`_used_items`)."""
    a, b = frame[item_a], frame[item_b]
    for name, col in ((item_a, a), (item_b, b)):
        if col.null_count():
            raise ValueError(f"null item in column {name!r}: " + _first_bad(frame, col.is_null(), name))
    numeric = a.dtype.is_numeric() and b.dtype.is_numeric()
    if not numeric:
        a, b = a.cast(pl.String), b.cast(pl.String)
    given_items = items is not None
    if numeric and not given_items and a.dtype.is_integer() and b.dtype.is_integer():
        items = None  # decided below
    elif items is None:
        items = pl.concat([a, b]).unique().sort()
    else:
        items = pl.Series("item", items)
        if not numeric:
            items = items.cast(pl.String)
    if numeric:
        va, vb = a.to_numpy(), b.to_numpy()
        if not given_items and va.dtype.kind in "iu" and vb.dtype.kind in "iu":
            lo_v = min(int(va.min()), int(vb.min()))
            hi_v = max(int(va.max()), int(vb.max()))
            if not presence and lo_v >= 0 and hi_v < len(va) // 4:
                return va.astype(np.int64, copy=False), vb.astype(np.int64, copy=False), hi_v + 1
            if lo_v >= 0 and hi_v < max(4 * (len(va) + len(vb)), 1 << 20):
                # integer ids: a presence table instead of a sort, O(n + max id)
                present = np.zeros(hi_v + 1, dtype=bool)
                present[va] = True
                present[vb] = True
                keys = np.flatnonzero(present)
                if lo_v == 0 and len(keys) == hi_v + 1:  # ids 0..K-1, all used: codes = ids
                    return (va.astype(np.int64, copy=False), vb.astype(np.int64, copy=False),
                            pl.Series("item", keys.astype(va.dtype)))
                rank = np.cumsum(present) - 1
                return (rank[va].astype(np.int64), rank[vb].astype(np.int64),
                        pl.Series("item", keys.astype(va.dtype)))
        if items is None:
            items = pl.concat([a, b]).unique().sort()
        keys = items.to_numpy()
        out = []
        for name, col in ((item_a, a), (item_b, b)):
            v = col.to_numpy()
            pos = np.searchsorted(keys, v)
            pos = np.clip(pos, 0, len(keys) - 1)
            bad = keys[pos] != v
            if bad.any():
                unknown = sorted(set(v[bad].tolist()))[:10]
                raise ValueError(f"unknown item(s) in {name!r}: {unknown}")
            out.append(pos.astype(np.int64))
        return out[0], out[1], items
    enum = pl.Enum(items.to_list())
    out = []
    for name, col in ((item_a, a), (item_b, b)):
        try:
            out.append(col.cast(enum).to_physical().to_numpy().astype(np.int64))
        except Exception:
            unknown = sorted(set(col.to_list()) - set(items.to_list()))[:10]
            raise ValueError(f"unknown item(s) in {name!r}: {unknown}") from None
    return out[0], out[1], items


def first_item_runs(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, items)`` of rows sorted by first item: where each first item's run of rows
    starts, and that item."""
    starts = np.flatnonzero(first[1:] != first[:-1])
    starts += 1
    starts = np.concatenate([[0], starts])
    return starts, first[starts]


# the first 8 bytes of an Arrow string view (little-endian): the length (4 bytes) and then the
# first 4 bytes of the string inline, zero-padded
_VIEW_A = 1 | (ord("a") << 32)
_VIEW_B = 1 | (ord("b") << 32)


def _view_words(col: pl.Series) -> np.ndarray | None:
    """Each value's first 8 view bytes (uint64), read in place from the Arrow string-view layout
    polars keeps strings in (no copy, no string comparison); None when the column is not one
    chunk of string views without nulls (or the machine is big-endian)."""
    if sys.byteorder != "little":
        return None
    try:
        import pyarrow as pa

        arr = col.to_arrow(compat_level=pl.CompatLevel.newest())
        if isinstance(arr, pa.ChunkedArray):
            if arr.num_chunks != 1:
                return None
            arr = arr.chunk(0)
        if arr.type != pa.string_view() or arr.null_count:
            return None
        views = arr.buffers()[1]
    except Exception:  # an older polars or pyarrow: the string comparisons below
        return None
    words = np.frombuffer(views, dtype=np.uint64)
    return words[2 * arr.offset:2 * (arr.offset + len(arr)):2]


def outcome_codes(frame: pl.DataFrame, label: str) -> np.ndarray:
    """0 = "a", 1 = "b", 2 = "tie", 3 = "both_bad" (string comparisons: faster than a cast; the
    tie and both-bad comparisons only run when some label is neither "a" nor "b").  Labels
    that are all "a" or "b" are read from the string views in place (a third of the time)."""
    col = frame[label]
    if col.dtype != pl.String:
        col = col.cast(pl.String)
    words = _view_words(col)
    if words is not None:
        is_b = words == _VIEW_B
        if np.count_nonzero(is_b) + np.count_nonzero(words == _VIEW_A) == len(words):
            return is_b.view(np.int8)
    is_b = (col == "b").fill_null(False).to_numpy()
    codes = is_b.astype(np.int8)
    n_a = int((col == "a").sum())
    if n_a + int(np.count_nonzero(is_b)) == len(col):
        return codes
    valid = (col == "a").fill_null(False).to_numpy() | is_b
    for code, name in ((2, "tie"), (3, "both_bad")):
        hit = (col == name).fill_null(False).to_numpy()
        codes[hit] = code
        valid |= hit
    if not valid.all():
        bad = pl.Series(~valid)
        raise ValueError(
            f"labels must be one of {LABELS}; bad value at " + _first_bad(frame, bad, label)
        )
    return codes


def position_codes(frame: pl.DataFrame, shown_left: str) -> np.ndarray:
    """+1 when response a was shown on the left, -1 when b was, 0 when unknown."""
    col = frame[shown_left].cast(pl.String)
    bad = col.is_not_null() & ~col.is_in(["a", "b"])
    if bad.any():
        raise ValueError("shown_left must be 'a', 'b' or null; bad value at "
                         + _first_bad(frame, bad, shown_left))
    return (col == "a").cast(pl.Int8).fill_null(0).to_numpy().astype(np.int64) - (
        (col == "b").cast(pl.Int8).fill_null(0).to_numpy().astype(np.int64)
    )


@dataclass
class PairCounts:
    """Aggregated comparisons: one row per distinct (first, second, side, annotator, covariates)."""

    items: pl.Series
    first: np.ndarray
    second: np.ndarray
    wins: np.ndarray  # first item preferred
    losses: np.ndarray  # second item preferred
    ties: np.ndarray
    both_bad: np.ndarray
    position: np.ndarray | None = None  # +1 first shown left, -1 second shown left, 0 unknown
    covariates: np.ndarray | None = None  # (R, p): covariate of first minus second
    annotator: np.ndarray | None = None
    annotators: pl.Series | None = None
    covariate_names: list = field(default_factory=list)
    n_comparisons: int = 0
    # rows that are distinct (first, second) pairs sorted by pair (plain rows): where each
    # first item's run of rows starts and its item, ``(starts, items)``; None otherwise
    first_runs: tuple | None = None

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_rows(self) -> int:
        return len(self.first)

    @property
    def n_annotators(self) -> int:
        return 0 if self.annotators is None else len(self.annotators)

    def design(self) -> np.ndarray | None:
        """Dense predictor columns besides the items: [position] + covariates, shape (R, q)."""
        cols = []
        if self.position is not None:
            cols.append(self.position[:, None].astype(float))
        if self.covariates is not None:
            cols.append(self.covariates)
        return np.hstack(cols) if cols else None

    def item_table(self) -> pl.DataFrame:
        """Per-item counts: comparisons, wins, losses, ties, both_bad."""
        K = self.n_items
        f, s = self.first, self.second
        runs = None
        if len(f) and bool(np.all(f[1:] >= f[:-1])):  # sorted by first (as aggregate makes it)
            runs = first_item_runs(f)[0]

        def per_item(x_first, x_second):
            out = np.bincount(s, x_second, K)
            if runs is None:
                return out + np.bincount(f, x_first, K)
            out[f[runs]] += np.add.reduceat(x_first, runs)  # segment sums: no bincount stalls
            return out

        wins = per_item(self.wins, self.losses).astype(np.int64)
        losses = per_item(self.losses, self.wins).astype(np.int64)
        ties, both_bad = (per_item(x, x).astype(np.int64) if x.any() else np.zeros(K, np.int64)
                          for x in (self.ties, self.both_bad))
        return pl.DataFrame({
            "item": self.items,
            "comparisons": wins + losses + ties + both_bad,
            "wins": wins,
            "losses": losses,
            "ties": ties,
            "both_bad": both_bad,
        })


def aggregate(
    data,
    item_a: str = "model_a",
    item_b: str = "model_b",
    label: str = "label",
    *,
    shown_left: str | None = None,
    annotator: str | None = None,
    covariates: list[str] | None = None,
    items=None,
    annotators=None,
) -> tuple[PairCounts, str | None]:
    """Reduce a comparisons table to :class:`PairCounts` (and return the version hash)."""
    frame, version_hash = as_frame(data)
    covariates = list(covariates or [])
    _require_columns(frame, [item_a, item_b, label, shown_left, annotator, *covariates])
    if frame.height == 0:
        raise ValueError("the comparisons table is empty")
    plain = shown_left is None and annotator is None and not covariates
    ia, ib, item_labels = item_codes(frame, item_a, item_b, items, presence=not plain)
    same = ia == ib
    if same.any():
        idx = int(np.flatnonzero(same)[0])
        raise ValueError(f"an item compared with itself at row {idx} "
                         f"({item_a}={frame[item_a][idx]!r}); {int(same.sum())} such row(s)")
    outcome = outcome_codes(frame, label)
    if plain:
        # rows are (first, second, outcome) alone: their cells in cache-sized chunks
        ids = isinstance(item_labels, int)  # integer ids 0 .. K-1, their use not checked yet
        if ids:
            item_labels = pl.Series("item", np.arange(item_labels)).cast(frame[item_a].dtype)
        K = len(item_labels)
        ukey, counts = _count_sorted_cells(_plain_cells(ia, ib, outcome, K))
        pairs = _pair_counts(frame, item_labels, ukey, counts, K)
        return (_used_items(pairs) if ids else pairs), version_hash
    K = len(item_labels)
    swap = ia > ib
    first = np.minimum(ia, ib)
    second = np.maximum(ia, ib)
    # swapping exchanges "a" (0) and "b" (1): flip the low bit of those codes
    outcome ^= swap & (outcome < 2)
    sign = np.where(swap, -1, 1) if (shown_left is not None or covariates) else None

    key_parts = []  # (values, cardinality)
    pos = None
    if shown_left is not None:
        pos = position_codes(frame, shown_left) * sign
        key_parts.append((pos + 1, 3))
    ann = None
    ann_labels = None
    if annotator is not None:
        col = frame[annotator].cast(pl.String).fill_null(UNKNOWN_ANNOTATOR)
        ann_labels = col.unique().sort() if annotators is None else pl.Series(annotators).cast(pl.String)
        try:
            ann = col.cast(pl.Enum(ann_labels.to_list())).to_physical().to_numpy().astype(np.int64)
        except Exception:
            # annotators unseen at fit time get the code -1 (prior reliability)
            lookup = {v: i for i, v in enumerate(ann_labels.to_list())}
            ann = np.array([lookup.get(v, -1) for v in col.to_list()], dtype=np.int64)
        key_parts.append((ann + 1, len(ann_labels) + 1))
    cov = None
    if covariates:
        cov_frame = frame.select(covariates)
        for c in covariates:
            if not cov_frame[c].dtype.is_numeric() and cov_frame[c].dtype != pl.Boolean:
                raise ValueError(f"covariate {c!r} must be numeric, got {cov_frame[c].dtype}")
        cov = cov_frame.cast(pl.Float64).to_numpy()
        if not np.isfinite(cov).all():
            bad = ~np.isfinite(cov).all(axis=1)
            raise ValueError(f"covariates must be finite numbers; row {int(np.flatnonzero(bad)[0])} "
                             f"is not ({int(bad.sum())} bad row(s))")
        cov = cov * sign[:, None]

    card = K * K
    for _, c in key_parts:
        card *= c
    if card >= 2**60:
        raise ValueError("too many distinct keys to aggregate")
    # 32-bit keys when every key (shifted left by count_cells' two outcome bits) fits: the sort
    # there runs twice as fast
    dtype = _key_dtype(card)
    key = first.astype(dtype, copy=False) * K + second.astype(dtype, copy=False)
    for values, c in key_parts:
        key = key * c + values.astype(dtype, copy=False)
    if cov is None:
        ukey, counts = count_cells(key, outcome)
        r_cov = None
    else:
        cols = {"key": key, "outcome": outcome}
        for t in range(cov.shape[1]):
            cols[f"c{t}"] = cov[:, t]
        g = (
            pl.DataFrame(cols)
            .group_by(["key"] + [f"c{t}" for t in range(cov.shape[1])])
            .agg([(pl.col("outcome") == o).sum().alias(f"n{o}") for o in range(4)])
        )
        counts = np.ascontiguousarray(g.select([f"n{o}" for o in range(4)]).to_numpy().T)
        ukey = g["key"].to_numpy()
        r_cov = g.select([f"c{t}" for t in range(cov.shape[1])]).to_numpy()
    # decode the keys back to their components
    rest = ukey
    decoded = []
    for values, c in reversed(key_parts):
        decoded.append(rest % c)
        rest = rest // c
    decoded.reverse()
    r_first, r_second = rest // K, rest % K
    r_pos = decoded[0] - 1 if pos is not None else None
    r_ann = decoded[-1] - 1 if ann is not None else None
    counts = counts.astype(np.float64, copy=False)  # (4, R): each outcome's counts contiguous
    return (
        PairCounts(
            items=item_labels.alias("item"),
            first=r_first.astype(np.int64, copy=False),
            second=r_second.astype(np.int64, copy=False),
            wins=counts[0],
            losses=counts[1],
            ties=counts[2],
            both_bad=counts[3],
            position=None if r_pos is None else r_pos.astype(np.float64),
            covariates=r_cov,
            annotator=None if r_ann is None else r_ann.astype(np.int64),
            annotators=None if ann_labels is None else ann_labels.alias("annotator"),
            covariate_names=covariates,
            n_comparisons=int(frame.height),
        ),
        version_hash,
    )


CELL_CHUNK = 65_536  # rows a chunk of _plain_cells (its int64 temporaries stay in the L2 cache)


def _key_dtype(cardinality: int):
    """32-bit keys when every key shifted left by two outcome bits fits (the sort runs twice as
    fast), else 64-bit."""
    return np.int32 if 4 * cardinality < 2**31 else np.int64


def _plain_cells(ia: np.ndarray, ib: np.ndarray, outcome: np.ndarray, K: int) -> np.ndarray:
    """Each comparison's cell ``(min(a, b) K + max(a, b)) << 2 | outcome``, the outcome's "a" and
    "b" exchanged where ``a > b``.  Made chunk by chunk: a million comparisons in one pass of
    numpy calls on whole columns would make a dozen 8 MB temporaries, three times slower here
    (fresh memory, and the cache misses of each pass)."""
    n = len(ia)
    cell = np.empty(n, dtype=_key_dtype(K * K))
    for c in range(0, n, CELL_CHUNK):
        a, b, o = ia[c:c + CELL_CHUNK], ib[c:c + CELL_CHUNK], outcome[c:c + CELL_CHUNK]
        k = np.minimum(a, b).astype(np.int64, copy=False)
        k *= K
        k += np.maximum(a, b)
        k <<= 2
        flip = a > b  # swapping exchanges "a" (0) and "b" (1): flip the low bit of those codes
        flip &= o < 2
        k |= o ^ flip.view(np.int8)
        cell[c:c + CELL_CHUNK] = k
    return cell


def _pair_counts(frame: pl.DataFrame, item_labels: pl.Series, ukey: np.ndarray,
                 counts: np.ndarray, K: int) -> PairCounts:
    """:class:`PairCounts` of plain rows (sorted distinct keys ``first K + second``), with
    their first items' runs.  With few items a row, the first items come from where each one's
    run of keys starts (K binary searches and a repeat, instead of an integer division a
    row)."""
    if K + 1 <= len(ukey) // 32:  # (measured: 2.4x faster at 1k items, 1.4x slower at 100k)
        bounds = np.searchsorted(ukey, np.arange(K + 1, dtype=np.int64) * K)
        lengths = np.diff(bounds)
        r_first = np.repeat(np.arange(K, dtype=np.int64), lengths)
        r_second = (ukey - r_first * K).astype(np.int64, copy=False)
        used = np.flatnonzero(lengths)
        runs = (bounds[used], used)
    else:
        r_first, r_second = (x.astype(np.int64, copy=False) for x in np.divmod(ukey, K))
        runs = first_item_runs(r_first)
    counts = counts.astype(np.float64, copy=False)
    return PairCounts(
        items=item_labels.alias("item"),
        first=r_first,
        second=r_second,
        wins=counts[0], losses=counts[1], ties=counts[2], both_bad=counts[3],
        n_comparisons=int(frame.height),
        first_runs=runs,
    )


def _used_items(pairs: PairCounts) -> PairCounts:
    """``pairs`` made with the integer ids ``0 .. K-1`` as items: the ids that occur in its rows
    (as first items: the runs; as second: a presence table of the rows) stay the items, in
    order, the rows' codes their ranks (order kept, so the rows stay sorted)."""
    present = np.zeros(pairs.n_items, dtype=bool)
    present[pairs.first_runs[1]] = True
    present[pairs.second] = True
    if present.all():
        return pairs
    rank = np.cumsum(present) - 1
    starts, firsts = pairs.first_runs
    return replace(pairs, items=pairs.items.filter(pl.Series(present)), first=rank[pairs.first],
                   second=rank[pairs.second], first_runs=(starts, rank[firsts]))


def count_cells(key: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted) and their counts of each outcome 0-3, shape ``(4, R)``.

    One ``np.sort`` of ``4 key + outcome`` (numpy's SIMD quicksort: ~6 ms for 1M keys, a third
    of an ``argsort``; no inverse index, no table of all possible keys): runs of equal values
    are the (key, outcome) cells, and runs of equal keys the rows.
    """
    cell = key << 2
    cell |= outcome
    return _count_sorted_cells(cell)


def _count_sorted_cells(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`count_cells` of the cells ``key << 2 | outcome`` (sorted here, in place)."""
    n = len(cell)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros((4, 0))
    cell.sort()
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(cell[1:], cell[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    # run lengths as floats (the counts' type): a scatter that converts is twice as slow
    run = np.empty(len(starts))
    np.subtract(starts[1:], starts[:-1], out=run[:-1], casting="unsafe")
    run[-1] = n - starts[-1]
    cells = cell[starts]
    cell_key = cells >> 2
    m = len(cells)
    new_row = np.empty(m, dtype=bool)
    new_row[0] = True
    np.not_equal(cell_key[1:], cell_key[:-1], out=new_row[1:])
    # a cumulative sum of booleans into 32-bit integers: 3x faster than numpy's default 64
    row = np.cumsum(new_row, dtype=np.int32 if m < 2**31 else np.int64)
    row -= 1
    R = int(row[-1]) + 1
    counts = np.zeros((4, R))
    slot = (cells & 3).astype(np.int64)
    slot *= R
    slot += row
    counts.ravel()[slot] = run  # each (row, outcome) cell is one run
    # the keys by the rows' first cells (a gather: 3x faster than a boolean selection here)
    return (cell_key if R == m else cell_key[np.flatnonzero(new_row)]), counts


def _describe(items: pl.Series, idx, limit: int = 8) -> str:
    names = [str(items[int(i)]) for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(names) + more


def _strongly_connected_dense(first, second, first_beat, second_beat, K: int,
                              sorted_pairs: bool = False) -> bool:
    """Whether the graph "i beat (or tied) j" is strongly connected: every item reachable from
    item 0 along the edges and against them, by breadth-first search on a dense (K, K) matrix
    of edge bits (1: the row's item beat the column's, 2: the column's beat the row's, so both
    searches read rows; a few ms for a thousand items; building a sparse graph for
    ``connected_components`` costs 20 ms).  ``sorted_pairs``: the rows are distinct pairs
    sorted by pair, ``first < second`` (as :func:`aggregate` makes plain rows)."""
    fs = first * K
    fs += second
    sf = second * K
    sf += first
    if sorted_pairs or (len(fs) and bool(np.all(fs[1:] > fs[:-1]))
                        and bool(np.all(first < second))):
        # one row per pair: plain assignments
        won = (first_beat > 0).view(np.uint8)
        lost = (second_beat > 0).view(np.uint8)
        edges = np.zeros(K * K, dtype=np.uint8)
        edges[fs] = won | (lost << 1)
        edges[sf] = lost | (won << 1)
        edges = edges.reshape(K, K)
    else:  # bincount sums repeated rows of a pair
        forward = ((np.bincount(fs, first_beat, K * K) + np.bincount(sf, second_beat, K * K))
                   > 0).reshape(K, K)
        edges = forward.view(np.uint8) | (forward.T.view(np.uint8) << 1)
    for bit in (1, 2):
        seen = np.zeros(K, dtype=bool)
        seen[0] = True
        frontier = np.array([0])
        while len(frontier):
            reached = (edges[frontier] & bit).any(axis=0)
            reached &= ~seen
            seen |= reached
            frontier = np.flatnonzero(reached)
        if not seen.all():
            return False
    return True


def check_identifiable(pairs: PairCounts, ties_inform: bool) -> None:
    """Raise :class:`NoFiniteMLEError` when the maximum-likelihood scores are not finite.

    Finite Bradley-Terry scores exist iff the directed graph "i beat (or tied) j" is strongly
    connected (Ford 1957; Hunter 2004, assumption 1).  The message names the components and the
    items that never lose or never win.
    """
    K = pairs.n_items
    tie_w = (pairs.ties + pairs.both_bad) if ties_inform else 0.0
    if 1 < K <= 4096 and _strongly_connected_dense(
            pairs.first, pairs.second, pairs.wins + tie_w, pairs.losses + tie_w, K,
            sorted_pairs=pairs.first_runs is not None):
        return
    n = pairs.wins + pairs.losses + pairs.ties + pairs.both_bad
    used = n > 0
    f, s = pairs.first[used], pairs.second[used]
    tie_w = (pairs.ties + pairs.both_bad) if ties_inform else np.zeros_like(pairs.ties)
    beats_fs = (pairs.wins + tie_w)[used] > 0
    beats_sf = (pairs.losses + tie_w)[used] > 0
    src = np.concatenate([f[beats_fs], s[beats_sf]])
    dst = np.concatenate([s[beats_fs], f[beats_sf]])
    directed = coo_matrix((np.ones(len(src)), (src, dst)), shape=(K, K)).tocsr()
    n_strong, strong = connected_components(directed, directed=True, connection="strong")
    if n_strong == 1:
        return
    und = coo_matrix((np.ones(len(f)), (f, s)), shape=(K, K)).tocsr()
    n_weak, weak = connected_components(und, directed=False)
    if n_weak > 1:
        sizes = np.bincount(weak)
        order = np.argsort(-sizes)
        parts = []
        for c in order[:5]:
            members = np.flatnonzero(weak == c)
            parts.append(f"[{_describe(pairs.items, members, 5)}] ({len(members)} items)")
        more = f" and {n_weak - 5} more" if n_weak > 5 else ""
        raise NoFiniteMLEError(
            f"the comparison graph is disconnected: {n_weak} components: "
            + "; ".join(parts) + more
            + ". Scores of different components are not comparable; pass l2=... (a Gaussian prior) "
            "to fit anyway, or fit each component separately."
        )
    if n_strong > 1:
        out_deg = np.bincount(dst, minlength=K)  # times an item was beaten
        in_deg = np.bincount(src, minlength=K)
        never_lose = np.flatnonzero(out_deg == 0)
        never_win = np.flatnonzero(in_deg == 0)
        msg = (f"no finite maximum-likelihood scores: the win graph has {n_strong} strongly "
               f"connected components (some items are better than all they met, without a loss "
               f"to link them back)")
        if len(never_lose):
            msg += f"; items that never lose: {_describe(pairs.items, never_lose)}"
        if len(never_win):
            msg += f"; items that never win: {_describe(pairs.items, never_win)}"
        if not len(never_lose) and not len(never_win):
            sizes = np.bincount(strong)
            small = np.argsort(sizes)[:3]
            msg += "; smallest components: " + "; ".join(
                f"[{_describe(pairs.items, np.flatnonzero(strong == c), 5)}]" for c in small)
        msg += ". Pass l2=... (a Gaussian prior on the scores) to fit anyway."
        raise NoFiniteMLEError(msg)


def save_npz_atomically(path: Path, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file and a rename: a reader never
    sees half a file, and a failed write leaves the old file in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
