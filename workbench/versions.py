"""Versions: immutable, hashed snapshots of the labels, stored as Parquet.

A snapshot fixes a watermark (the largest label event it saw), resolves every comparison to its
latest event at that watermark (corrections replace, retractions remove), joins the texts, and
writes one comparisons table. Its content hash covers the canonical rows (ids are content
hashes, so the texts are covered too): the same events always give the same hash. The file's own
SHA-256 is recorded as well, and a file that no longer matches it is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import polars as pl
import sqlalchemy as sa

from . import schema
from .frames import COMPARISONS_SCHEMA, MESSAGES

if TYPE_CHECKING:
    from .store import Store

HASH_COLUMNS = [
    "comparison_id", "prompt_id", "response_a_id", "response_b_id", "label", "strength",
    "annotator_id", "shown_left", "source", "gold", "rationale", "duration_ms", "created_at",
]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class TamperedVersion(RuntimeError):
    """A version's file no longer matches the hash recorded when it was taken."""


@dataclass(frozen=True)
class Version:
    """A named, immutable snapshot of the labels. Read it with :meth:`to_polars`."""

    name: str
    hash: str
    watermark: int
    parent: str | None
    path: Path
    file_sha256: str
    n_comparisons: int
    stats: dict = field(repr=False)
    filters: dict | None = field(default=None, repr=False)
    description: str | None = None
    created_at: dt.datetime | None = None

    # -- reading
    def verify(self, deep: bool = False) -> None:
        """Raise :class:`TamperedVersion` unless the file matches its recorded hashes."""
        from .store import file_sha256

        if not self.path.exists():
            raise TamperedVersion(f"version {self.name!r}: its file {self.path} is missing")
        st = self.path.stat()
        key = (str(self.path), st.st_size, st.st_mtime_ns)
        if _VERIFIED.get(key) != self.file_sha256:
            actual = file_sha256(self.path)
            if actual != self.file_sha256:
                raise TamperedVersion(
                    f"version {self.name!r}: file {self.path} does not match its recorded SHA-256 "
                    f"(expected {self.file_sha256[:16]}..., found {actual[:16]}...); it was changed "
                    "after the snapshot and is refused"
                )
            _VERIFIED[key] = self.file_sha256
        if deep:
            frame = pl.read_parquet(self.path)
            if content_hash(frame) != self.hash and content_hash_v1(frame) != self.hash:
                raise TamperedVersion(f"version {self.name!r}: its rows no longer match content hash {self.hash[:16]}...")

    def to_polars(self) -> pl.DataFrame:
        """The comparisons table (see :data:`workbench.frames.COMPARISONS_SCHEMA`)."""
        self.verify()
        return pl.read_parquet(self.path)

    def to_pandas(self) -> Any:
        return self.to_polars().to_pandas()

    def to_datasets(self) -> Any:
        import datasets

        return datasets.Dataset(self.to_polars().to_arrow())

    def export(self, path: str | os.PathLike, format: str = "trl", *, ties: str = "drop") -> Path:
        """Write the version as ``trl``, ``trl-conversational``, ``parquet``, ``jsonl`` or ``datasets``."""
        from .export import export_version

        return export_version(self, path, format, ties=ties)


_VERIFIED: dict[tuple[str, int, int], str] = {}


def resolve_comparisons(
    store: "Store",
    conn: Any = None,
    watermark: int | None = None,
    exclude_annotators: Sequence[str] = (),
    sources: Sequence[str] | None = None,
) -> tuple[pl.DataFrame, int]:
    """The comparisons table at a watermark (``None``: now), and that watermark.

    Every comparison resolves to its latest event with ``event_id <= watermark``: a correction
    replaces the label, a retraction removes the comparison. The events come back as Arrow and
    are resolved in polars. ``conn`` is accepted for compatibility and not used: the read runs in
    a transaction of its own.
    """
    events, prompts, responses, watermark = _resolve_parts(store, watermark, exclude_annotators, sources)
    if events.height == 0:
        return pl.DataFrame(schema=COMPARISONS_SCHEMA), watermark
    return _assemble(events, prompts, responses), watermark


def _resolve_parts(
    store: "Store", watermark: int | None, exclude_annotators: Sequence[str], sources: Sequence[str] | None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, int]:
    """The resolved label events at a watermark, and the prompts and responses they name.

    The events come back in event order (``kind`` and :data:`HASH_COLUMNS`); each comparison
    keeps its latest event, and a comparison whose latest event is a retraction is dropped.
    """
    from .bulk import transaction

    if watermark is None:
        watermark = current_watermark(store)
    with transaction(store, write=False) as tx:
        events = _read_events(tx, int(watermark))
        if events.height and events["comparison_id"].n_unique() < events.height:
            events = events.unique(subset="comparison_id", keep="last", maintain_order=True)
        events = events.filter(pl.col("kind") == "label").drop("kind")  # rows came in event order
        if exclude_annotators:
            events = events.filter(~pl.col("annotator_id").is_in(list(exclude_annotators)))
        if sources is not None:
            events = events.filter(pl.col("source").is_in(list(sources)))
        if events.height == 0:
            return events, pl.DataFrame(), pl.DataFrame(), watermark
        prompt_ids = events.get_column("prompt_id").unique()
        response_ids = pl.concat([events["response_a_id"], events["response_b_id"]]).unique()
        prompts, responses = _read_texts(tx, prompt_ids, response_ids)
    return events, prompts, responses, watermark


EVENT_SCHEMA = {"kind": pl.String, **{c: COMPARISONS_SCHEMA[c] for c in HASH_COLUMNS}}
# How the SQLite column-wise read gets each event column (see workbench.bulk.ColumnQuery). The
# strength is read exactly, row-wise, only for the events that have one: SQLite renders a
# REAL as text with 15 digits, which does not always round-trip.
_EVENT_COLUMNS = {
    "event_id": ("event_id", "int"), "kind": ("kind", "token"), "comparison_id": ("comparison_id", "token"),
    "prompt_id": ("prompt_id", "token"), "response_a_id": ("response_a_id", "token"), "response_b_id": ("response_b_id", "token"),
    "label": ("label", "token"), "annotator_id": ("annotator_id", "token"), "shown_left": ("shown_left", "token"),
    "source": ("source", "token"), "gold": ("gold", "int"), "rationale": ("rationale", "text"),
    "duration_ms": ("duration_ms", "int"), "created_at": ("created_at", "token"),
}
EVENT_CHUNK = 250_000  # events per column-wise read
TEXT_CHUNK = 50_000  # prompts or responses per column-wise read


def _read_events(tx: Any, watermark: int) -> pl.DataFrame:
    """Every event with ``event_id <= watermark``, in event order (:data:`EVENT_SCHEMA`)."""
    if tx.dialect != "sqlite" or tx._adbc is not None:
        return tx.frame(
            f"SELECT kind, {', '.join(HASH_COLUMNS)} FROM label_events WHERE event_id <= {tx.ph(0)} ORDER BY event_id",
            (watermark,), schema=EVENT_SCHEMA,
        )
    from .bulk import ColumnQuery, ColumnReadError

    queries = [
        ColumnQuery("FROM label_events WHERE event_id > ? AND event_id <= ?", (lo, min(lo + EVENT_CHUNK, watermark)),
                    _EVENT_COLUMNS, scalars=["sum(strength IS NOT NULL)"])
        for lo in range(0, watermark, EVENT_CHUNK)
    ]
    parts = []
    for (lo, hi), got in zip([q.params for q in queries], _fetch_pipelined(tx, queries)):
        try:
            if isinstance(got, Exception):
                raise got
            frame, (n_strength,) = got
            frame = frame.with_columns(
                pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in ("label", "shown_left")
            )
            if n_strength:
                exact = tx.frame("SELECT event_id, strength FROM label_events WHERE event_id > ? AND event_id <= ? AND strength IS NOT NULL",
                                 (lo, hi))
                frame = frame.join(exact.select(pl.col("event_id").cast(pl.Int64), pl.col("strength").cast(pl.Float64)),
                                   on="event_id", how="left", maintain_order="left")
            else:
                frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("strength"))
            if not frame["event_id"].is_sorted():
                frame = frame.sort("event_id")
            frame = frame.select([_cast_column(frame[c], t) for c, t in EVENT_SCHEMA.items()])
        except (ColumnReadError, pl.exceptions.PolarsError):  # an unexpected value: read these rows row-wise
            frame = tx.frame(  # (no schema: Python objects, so floats stay exact)
                f"SELECT kind, {', '.join(HASH_COLUMNS)} FROM label_events WHERE event_id > ? AND event_id <= ? ORDER BY event_id",
                (lo, hi),
            )
            frame = frame.select([_cast_column(frame[c], t) for c, t in EVENT_SCHEMA.items()]) if frame.height else pl.DataFrame(schema=EVENT_SCHEMA)
        parts.append(frame)
    return pl.concat(parts) if parts else pl.DataFrame(schema=EVENT_SCHEMA)


def _cast_column(col: pl.Series, dtype: Any) -> pl.Series:
    from .bulk import _cast

    return col if col.dtype == dtype else _cast(col, dtype)


def _fetch_pipelined(tx: Any, queries: list[Any]) -> Iterator[Any]:
    """The rows of column-wise queries, fetched one ahead in a thread (SQLite works without the
    GIL while polars parses the chunk before); yields ``(frame, scalars)`` or the exception.

    Every fetch has ended before this returns, so the caller may use the cursor afterwards.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not queries:
        return
    cursor = tx._cur
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wb-read") as pool:
        futures = [pool.submit(q.fetch, cursor) for q in queries]
        results = []
        for q, fut in zip(queries, futures):
            try:
                results.append(q.parse(fut.result()))
            except Exception as exc:  # noqa: BLE001  (ColumnReadError, PolarsError: the caller falls back)
                results.append(exc)
    yield from results


_PROMPT_COLUMNS = {"prompt_id": ("p.prompt_id", "token"), "prompt": ("p.text", "text"), "messages": ("p.messages", "text"), "category": ("p.category", "text")}
_RESPONSE_COLUMNS = {"response_id": ("r.response_id", "token"), "text": ("r.text", "text"), "model": ("r.model", "text")}
PROMPT_SCHEMA = {"prompt_id": pl.String, "prompt": pl.String, "messages": pl.String, "category": pl.String}
RESPONSE_SCHEMA = {"response_id": pl.String, "text": pl.String, "model": pl.String}


def _read_texts(tx: Any, prompt_ids: pl.Series, response_ids: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The prompts and responses with these ids (each once, in no particular order)."""
    if tx.dialect == "sqlite" and tx._adbc is None:
        try:
            return (_sqlite_texts(tx, prompt_ids, "prompts", "p", "prompt_id", _PROMPT_COLUMNS, PROMPT_SCHEMA),
                    _sqlite_texts(tx, response_ids, "responses", "r", "response_id", _RESPONSE_COLUMNS, RESPONSE_SCHEMA))
        except Exception:  # noqa: BLE001  (ColumnReadError: a text too big for one read, ...): row-wise below
            pass
    tmp_p = tx.temp_table(prompt_ids.to_frame("prompt_id"))
    tmp_r = tx.temp_table(response_ids.to_frame("response_id"))
    temp = "temp." if tx.dialect == "sqlite" else ""
    prompts = tx.frame(
        f"SELECT p.prompt_id, p.text AS prompt, p.messages, p.category FROM {temp}{tmp_p} t JOIN prompts p ON p.prompt_id = t.prompt_id",
        schema=PROMPT_SCHEMA,
    )
    responses = tx.frame(
        f"SELECT r.response_id, r.text, r.model FROM {temp}{tmp_r} t JOIN responses r ON r.response_id = t.response_id",
        schema=RESPONSE_SCHEMA,
    )
    return prompts, responses


def _sqlite_texts(tx: Any, wanted: pl.Series, table: str, alias: str, key: str, columns: dict, schema: dict) -> pl.DataFrame:
    """Rows of ``table`` by key, column-wise: the keys go in as one JSON array per chunk."""
    from .bulk import ColumnQuery

    keys = wanted.sort().to_list()  # in key order, the look-ups walk the index once (3x faster than at random)
    queries = [
        ColumnQuery(f"FROM json_each(?) AS j CROSS JOIN {table} AS {alias} ON {alias}.{key} = j.value",
                    (json.dumps(keys[i:i + TEXT_CHUNK]),), columns)
        for i in range(0, len(keys), TEXT_CHUNK)
    ]
    parts = []
    for got in _fetch_pipelined(tx, queries):
        if isinstance(got, Exception):
            raise got
        parts.append(got[0])
    out = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    if out.height != len(keys):
        from .bulk import ColumnReadError

        raise ColumnReadError(f"{table}: {out.height} rows for {len(keys)} ids")
    return out.select([pl.col(c).cast(t) for c, t in schema.items()])


def current_watermark(store: "Store") -> int:
    """The largest event id such that every event up to it is committed.

    SQLite has one writer at a time, so the largest visible id is that. On PostgreSQL a
    transaction can take an id and commit after a later one; ``LOCK ... IN SHARE MODE`` waits
    for the writers in flight (and holds new ones back for the moment it takes to read the
    maximum), so no event below the watermark can appear after the snapshot.
    """
    with store.engine.connect() as conn:
        with conn.begin():
            if store.dialect == "postgresql":
                conn.exec_driver_sql("LOCK TABLE label_events IN SHARE MODE")
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(schema.label_events.c.event_id), 0))).scalar_one())


def _assemble(events: pl.DataFrame, prompts: pl.DataFrame, responses: pl.DataFrame) -> pl.DataFrame:
    prompts = prompts.with_columns(
        pl.when(pl.col("messages").is_null())
        .then(pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content"))))
        .otherwise(pl.col("messages").str.json_decode(MESSAGES))
        .alias("prompt_messages")
    ).drop("messages")
    frame = (
        events.join(prompts, on="prompt_id", how="left")
        .join(responses.rename({"response_id": "response_a_id", "text": "response_a", "model": "model_a"}), on="response_a_id", how="left")
        .join(responses.rename({"response_id": "response_b_id", "text": "response_b", "model": "model_b"}), on="response_b_id", how="left")
    )
    out = frame.select([pl.col(c).cast(t) for c, t in COMPARISONS_SCHEMA.items()])
    return out.sort(["created_at", "comparison_id"])


TEXT_COLUMNS = ("prompt", "response_a", "response_b")
FILE_ORDER = ["created_at", "comparison_id"]  # the rows' order in a version's file, and in its hash


def _assemble_for_file(events: pl.DataFrame, prompts: pl.DataFrame, responses: pl.DataFrame) -> tuple[pl.DataFrame, Any, dict]:
    """What :func:`_assemble` gives, as Arrow, without copying a text into every row that shows it.

    Returns the resolved events in file order (:data:`FILE_ORDER`; the hash needs no texts),
    the comparisons table as Arrow and its statistics. The text columns (``prompt``,
    ``response_a``, ``response_b``, and the contents and roles of ``prompt_messages``) are
    dictionary arrays over the distinct prompts and responses (row positions from joins on
    ids), as are ``category`` and the models; written to Parquet (without the Arrow schema) it
    reads as :func:`_assemble`'s table, in the same row order.
    """
    import numpy as np
    import pyarrow as pa

    prompts = prompts.with_columns(
        pl.when(pl.col("messages").is_null())
        .then(pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content"))))
        .otherwise(pl.col("messages").str.json_decode(MESSAGES))
        .alias("prompt_messages")
    )
    ordered = events.sort(FILE_ORDER) if not _in_file_order(events) else events
    index = (
        ordered.select("prompt_id", "response_a_id", "response_b_id")
        .join(prompts.select("prompt_id", pl.int_range(pl.len(), dtype=pl.Int32).alias("_p")), on="prompt_id", how="left", maintain_order="left")
        .join(responses.select(pl.col("response_id").alias("response_a_id"), pl.int_range(pl.len(), dtype=pl.Int32).alias("_a")),
              on="response_a_id", how="left", maintain_order="left")
        .join(responses.select(pl.col("response_id").alias("response_b_id"), pl.int_range(pl.len(), dtype=pl.Int32).alias("_b")),
              on="response_b_id", how="left", maintain_order="left")
    )
    if index.select(pl.any_horizontal(pl.col("_p", "_a", "_b").is_null().any())).item():
        raise RuntimeError("a label event names a prompt or response that is not in the store")
    p_idx, a_idx, b_idx = (index.get_column(c) for c in ("_p", "_a", "_b"))

    def texts(col: pl.Series) -> Any:
        return col.cast(pl.String).to_arrow(compat_level=pl.CompatLevel.oldest())

    distinct_of: dict[str, tuple[pl.Series | None, Any]] = {}  # response texts and models serve two columns each

    def dictionary(indices: pl.Series, values: pl.Series, key: str) -> Any:
        """``values[indices]`` as a dictionary array. Parquet takes a dictionary of distinct
        values without nulls (else it writes the column plain): the same text from two models
        is two responses, and a null category gets a null index."""
        if key not in distinct_of:
            distinct = values.drop_nulls().unique(maintain_order=True)
            position = None
            if len(distinct) < len(values):
                position = values.to_frame("v").join(distinct.to_frame("v").with_row_index("u"), on="v", how="left", maintain_order="left").get_column("u")
            distinct_of[key] = (position, texts(distinct if position is not None else values))
        position, dictionary_values = distinct_of[key]
        if position is not None:
            indices = position.gather(indices)
        return pa.DictionaryArray.from_arrays(indices.cast(pl.Int32).to_arrow(), dictionary_values)

    # prompt_messages: row i holds the messages of prompt p[i]; its child struct's fields are
    # dictionary arrays over all the prompts' messages (positions start[p] .. start[p] + len[p]).
    per_prompt = prompts.get_column("prompt_messages").to_arrow(compat_level=pl.CompatLevel.oldest())
    per_prompt = per_prompt.cast(pa.large_list(pa.struct([("role", pa.large_string()), ("content", pa.large_string())])))
    msg_offsets = np.frombuffer(per_prompt.buffers()[1], dtype=np.int64)[per_prompt.offset:per_prompt.offset + len(per_prompt) + 1]
    starts, lengths = msg_offsets[:-1] - msg_offsets[0], np.diff(msg_offsets)
    child = per_prompt.flatten()
    p_np = p_idx.to_numpy()
    row_len = lengths[p_np]
    offsets = np.zeros(len(p_np) + 1, dtype=np.int64)
    np.cumsum(row_len, out=offsets[1:])
    positions = (np.repeat(starts[p_np] - offsets[:-1], row_len) + np.arange(offsets[-1], dtype=np.int64)).astype(np.int32)
    positions = pl.Series(positions)
    messages = pa.LargeListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays(
            [dictionary(positions, pl.Series(child.field(f)), f) for f in ("role", "content")], names=["role", "content"]
        ),
    )
    narrow = ordered.select([pl.col(c).cast(t) for c, t in EVENT_SCHEMA.items() if c in COMPARISONS_SCHEMA])
    response_texts, response_models = responses["text"], responses["model"]
    columns = {
        "prompt": dictionary(p_idx, prompts["prompt"], "prompt"),
        "prompt_messages": messages,
        "category": dictionary(p_idx, prompts["category"], "category"),
        "response_a": dictionary(a_idx, response_texts, "response"),
        "model_a": dictionary(a_idx, response_models, "model"),
        "response_b": dictionary(b_idx, response_texts, "response"),
        "model_b": dictionary(b_idx, response_models, "model"),
    }
    table = narrow.to_arrow(compat_level=pl.CompatLevel.oldest())
    table = pa.table([columns[c] if c in columns else table.column(c) for c in COMPARISONS_SCHEMA], names=list(COMPARISONS_SCHEMA))
    labels = dict(narrow.group_by("label").len().iter_rows())
    used_models = pl.concat([index["_a"], index["_b"]]).unique()
    stats = {
        "comparisons": narrow.height,
        "prompts": prompts.height,
        "responses": responses.height,
        "annotators": narrow["annotator_id"].n_unique(),
        "models": responses["model"].gather(used_models).drop_nulls().n_unique(),
        "labels": {k: labels.get(k, 0) for k in schema.LABELS},
        "sources": dict(narrow.group_by("source").len().iter_rows()),
        "gold": int(narrow["gold"].sum() or 0),
        "with_rationale": int(narrow["rationale"].is_not_null().sum()),
        "categories": prompts["category"].drop_nulls().n_unique(),
    }
    return narrow, table, stats


def _in_file_order(frame: pl.DataFrame) -> bool:
    """Whether the rows are sorted by :data:`FILE_ORDER` (a linear check, no sort)."""
    if frame.height < 2:
        return True
    t, c = pl.col("created_at"), pl.col("comparison_id")
    before = (t > t.shift(1)) | ((t == t.shift(1)) & (c > c.shift(1)))
    return bool(frame.select(before.slice(1).all()).item())


HASH_PREFIX = b"workbench-comparisons-v2\n"


def content_hash(frame: pl.DataFrame) -> str:
    """SHA-256 over the canonical rows: the :data:`HASH_COLUMNS`, rows in :data:`FILE_ORDER`.

    Comparison ids are unique in a version, so that order is a function of the content. Each
    column goes in as canonical bytes, column after column (see :func:`_canonical_bytes`): the
    column's name, then for a text column the byte length of every value (-1 for null) and the
    UTF-8 bytes of all values back to back; for a number, timestamp (UTC microseconds) or flag
    column a null mask and the values as little-endian 64-bit numbers. No value is turned into
    a Python object or a formatted text, so hashing 1M comparisons takes a fraction of a second.
    """
    canon = frame.select(HASH_COLUMNS)
    if not _in_file_order(canon):
        canon = canon.sort(FILE_ORDER)
    h = hashlib.sha256(HASH_PREFIX)
    h.update(canon.height.to_bytes(8, "little"))
    for name in HASH_COLUMNS:
        h.update(name.encode("ascii") + b"\n")
        for part in _canonical_bytes(canon.get_column(name)):
            h.update(part)
    return h.hexdigest()


def content_hash_v1(frame: pl.DataFrame) -> str:
    """The first hash definition (versions snapshotted before v2 carry it): SHA-256 of the
    canonical rows written as CSV, sorted by comparison id. Kept so that ``verify(deep=True)``
    still checks those versions."""
    canon = frame.select(HASH_COLUMNS).sort("comparison_id").with_columns(
        pl.col("strength").cast(pl.String),
        pl.col("created_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
        pl.col("gold").cast(pl.Int8),
    )
    h = hashlib.sha256(b"workbench-comparisons-v1\n")
    buf = io.BytesIO()
    canon.write_csv(buf, include_header=True)
    h.update(buf.getbuffer())
    return h.hexdigest()


def _canonical_bytes(col: pl.Series) -> list[Any]:
    import numpy as np

    if col.dtype == pl.String:
        lengths = col.str.len_bytes().cast(pl.Int64).fill_null(-1).to_numpy().astype("<i8")
        arr = col.fill_null("").to_arrow(compat_level=pl.CompatLevel.oldest())
        if arr.type != "large_string":
            arr = arr.cast("large_string")
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
        data = arr.buffers()[2]
        return [lengths.tobytes(), memoryview(data)[offsets[0]:offsets[-1]] if data is not None and len(arr) else b""]
    if isinstance(col.dtype, pl.Datetime):
        values = col.dt.convert_time_zone("UTC").dt.epoch("us") if col.dtype.time_zone else col.dt.epoch("us")
    elif col.dtype == pl.Boolean:
        values = col.cast(pl.Int64)
    elif col.dtype.is_float():
        values = col.cast(pl.Float64) + 0.0  # -0.0 and 0.0 are one value
    else:
        values = col.cast(pl.Int64)
    mask = col.is_null().cast(pl.UInt8).to_numpy()
    dtype = "<f8" if values.dtype == pl.Float64 else "<i8"
    return [mask.tobytes(), values.fill_null(0).to_numpy().astype(dtype).tobytes()]


STATISTICS_COLUMNS = ["category", "model_a", "model_b", "label", "strength", "annotator_id", "shown_left", "source", "gold", "duration_ms", "created_at"]
PLAIN_COLUMNS = {"comparison_id", "strength", "duration_ms", "created_at"}  # no dictionary: (almost) every value differs


def write_version_file(frame: Any, path: str | os.PathLike) -> None:
    """Write a comparisons table as Parquet: dictionary-encoded texts, LZ4 pages.

    A version repeats each prompt and response text in every comparison that shows it, so
    dictionary encoding (with a dictionary page large enough for the distinct texts) stores each
    text once per row group; LZ4 then costs little to write and read. Columns whose values are
    (nearly) all distinct are written plain, and min/max statistics are kept only for the short
    columns (for the texts they cost more than the rest of the write and serve no query). On
    the 1M-comparison benchmark (``benchmarks/store.py``) the file is 165 MiB instead of 272
    MiB (zstd on plain pages) and reads back in about a quarter of the time. ``frame`` is a
    polars frame or an Arrow table (whose text columns may already be dictionary arrays, see
    :func:`_assemble_for_file`); the Arrow schema is not stored, so every reader sees plain
    string columns.
    """
    import pyarrow.parquet as pq

    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    leaves = _parquet_leaves(table.schema)
    pq.write_table(
        table, path, compression="lz4", dictionary_pagesize_limit=1 << 30, store_schema=False,
        use_dictionary=[p for p in leaves if p.split(".")[0] not in PLAIN_COLUMNS],
        write_statistics=[p for p in leaves if p.split(".")[0] in STATISTICS_COLUMNS],
    )


def _parquet_leaves(arrow_schema: Any) -> list[str]:
    """The Parquet column paths (``prompt_messages.list.element.content``...) of an Arrow schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(arrow_schema.empty_table(), buf, store_schema=False)
    meta = pq.read_metadata(pa.BufferReader(buf.getvalue()))
    return [meta.schema.column(i).path for i in range(meta.num_columns)]


def frame_stats(frame: pl.DataFrame) -> dict:
    labels = dict(frame.group_by("label").len().iter_rows()) if frame.height else {}
    sources = dict(frame.group_by("source").len().iter_rows()) if frame.height else {}
    return {
        "comparisons": frame.height,
        "prompts": frame["prompt_id"].n_unique(),
        "responses": pl.concat([frame["response_a_id"], frame["response_b_id"]]).n_unique() if frame.height else 0,
        "annotators": frame["annotator_id"].n_unique(),
        "models": pl.concat([frame["model_a"], frame["model_b"]]).drop_nulls().n_unique() if frame.height else 0,
        "labels": {k: labels.get(k, 0) for k in schema.LABELS},
        "sources": sources,
        "gold": int(frame["gold"].sum() or 0),
        "with_rationale": int(frame["rationale"].is_not_null().sum()),
        "categories": frame["category"].drop_nulls().n_unique(),
    }


def take_snapshot(
    store: "Store",
    name: str,
    *,
    description: str | None = None,
    exclude_annotators: Sequence[str] = (),
    sources: Sequence[str] | None = None,
) -> Version:
    from .store import StoreError, file_sha256, utcnow

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError("a version name is 1-128 letters, digits, '_', '.', '-', starting with a letter or digit")
    with store._read() as conn:
        if conn.execute(sa.select(schema.versions.c.name).where(schema.versions.c.name == name)).first():
            raise StoreError(f"version name {name!r} is taken; names are never reused")
        parent_row = conn.execute(sa.select(schema.versions.c.name).order_by(schema.versions.c.created_at.desc()).limit(1)).first()
    events, prompts, responses, watermark = _resolve_parts(store, None, exclude_annotators, sources)
    if events.height:
        frame, table, stats = _assemble_for_file(events, prompts, responses)
    else:
        frame = table = pl.DataFrame(schema=COMPARISONS_SCHEMA)
        stats = frame_stats(frame)
    del events, prompts, responses
    vdir = store.files_dir / "versions"
    vdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=vdir, suffix=".parquet.tmp")
    os.close(fd)
    try:
        # The file is written in a thread (Arrow's writer holds no GIL) while the content hash
        # is computed here: on two cores, the hash costs no time.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wb-parquet") as pool:
            written = pool.submit(write_version_file, table, tmp)
            try:
                digest = content_hash(frame)
            finally:
                written.result()
        del table
        sha = file_sha256(tmp)
        final = vdir / f"{digest[:32]}-{sha[:12]}.parquet"
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    filters = {"exclude_annotators": list(exclude_annotators), "sources": list(sources) if sources is not None else None}
    row = dict(
        name=name, content_hash=digest, watermark=watermark, parent=parent_row[0] if parent_row else None,
        path=str(final.relative_to(store.files_dir)), file_sha256=sha, n_comparisons=frame.height,
        stats=json.dumps(stats), filters=json.dumps(filters), description=description, created_at=utcnow(),
    )
    try:
        with store._write() as conn:
            conn.execute(schema.versions.insert().values(**row))
    except sa.exc.IntegrityError as exc:
        raise StoreError(f"version name {name!r} is taken; names are never reused") from exc
    return _version_from_row(store, row)


def _version_from_row(store: "Store", row: Any) -> Version:
    from .store import _as_utc

    return Version(
        name=row["name"], hash=row["content_hash"], watermark=int(row["watermark"]), parent=row["parent"],
        path=store.files_dir / row["path"], file_sha256=row["file_sha256"], n_comparisons=int(row["n_comparisons"]),
        stats=json.loads(row["stats"]), filters=json.loads(row["filters"]) if row["filters"] else None,
        description=row["description"], created_at=_as_utc(row["created_at"]),
    )


def load_version(store: "Store", ref: str) -> Version:
    from .store import NotFound, StoreError

    if isinstance(ref, Version):
        return ref
    t = schema.versions
    with store._read() as conn:
        row = conn.execute(sa.select(t).where(t.c.name == ref)).mappings().first()
        if row is None and isinstance(ref, str) and re.fullmatch(r"[0-9a-f]{6,64}", ref):
            rows = conn.execute(sa.select(t).where(t.c.content_hash.like(ref + "%")).order_by(t.c.created_at)).mappings().all()
            if len({r["content_hash"] for r in rows}) > 1:
                raise StoreError(f"hash prefix {ref!r} matches several versions; give more characters")
            row = rows[0] if rows else None
    if row is None:
        raise NotFound(f"no version named {ref!r} (and no version hash starts with it); see `workbench versions list`")
    return _version_from_row(store, row)


def diff_versions(old: Version, new: Version) -> pl.DataFrame:
    """One row per comparison that differs: ``added``, ``removed`` or ``changed``."""
    keep = ["comparison_id", "prompt_id", "response_a_id", "response_b_id", "annotator_id", "label", "strength"]
    a = old.to_polars().select(keep)
    b = new.to_polars().select(keep)
    j = a.join(b, on="comparison_id", how="full", suffix="_new", coalesce=True)
    change = (
        pl.when(pl.col("label").is_null()).then(pl.lit("added"))
        .when(pl.col("label_new").is_null()).then(pl.lit("removed"))
        .when((pl.col("label") != pl.col("label_new")) | (pl.col("strength").fill_null(-1.0) != pl.col("strength_new").fill_null(-1.0)))
        .then(pl.lit("changed"))
        .otherwise(pl.lit(None))
    )
    out = j.with_columns(change.alias("change")).filter(pl.col("change").is_not_null())
    return out.select(
        "comparison_id", "change",
        pl.coalesce("prompt_id", "prompt_id_new").alias("prompt_id"),
        pl.coalesce("annotator_id", "annotator_id_new").alias("annotator_id"),
        pl.col("label").alias("label_old"), pl.col("label_new"),
        pl.col("strength").alias("strength_old"), pl.col("strength_new"),
    ).sort("change", "comparison_id")
