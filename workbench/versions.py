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
from typing import TYPE_CHECKING, Any, Sequence

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
    parts = _read_resolved(store, watermark, exclude_annotators, sources)
    return parts.events, parts.prompts, parts.responses, parts.watermark


@dataclass
class _Resolved:
    """What :func:`_read_resolved` gives: the resolved events and the texts they name."""

    events: pl.DataFrame
    prompts: pl.DataFrame
    responses: pl.DataFrame
    watermark: int
    response_texts: Any = None  # responses["text"] as the Arrow array it was read as (row for row), if it was


def _read_resolved(
    store: "Store", watermark: int | None, exclude_annotators: Sequence[str], sources: Sequence[str] | None,
) -> _Resolved:
    from .bulk import transaction

    if watermark is None:
        watermark = current_watermark(store)
    watermark = int(watermark)
    with transaction(store, write=False) as tx:
        if tx.dialect == "sqlite" and tx._adbc is None:
            return _sqlite_resolved(store, tx, watermark, exclude_annotators, sources)
        events = _resolve(_read_events(tx, watermark), exclude_annotators, sources)
        if events.height == 0:
            return _Resolved(events, pl.DataFrame(), pl.DataFrame(), watermark)
        prompts, responses = _read_texts(tx, *_named_ids(events))
    return _Resolved(events, prompts, responses, watermark)


def _resolve(events: pl.DataFrame, exclude_annotators: Sequence[str], sources: Sequence[str] | None) -> pl.DataFrame:
    """Events in event order -> each comparison's latest event, retracted comparisons dropped, filtered."""
    if events.height and not _all_distinct(events["comparison_id"]):
        events = events.unique(subset="comparison_id", keep="last", maintain_order=True)
    if events.height and not events.select((pl.col("kind") == "label").all()).item():
        events = events.filter(pl.col("kind") == "label")  # rows came in event order
    events = events.drop("kind")
    if exclude_annotators:
        events = events.filter(~pl.col("annotator_id").is_in(list(exclude_annotators)))
    if sources is not None:
        events = events.filter(pl.col("source").is_in(list(sources)))
    return events


def _all_distinct(col: pl.Series) -> bool:
    """Whether no value of ``col`` repeats. Distinct 64-bit hashes mean distinct values, and
    counting them is several times cheaper than counting the values (no value is copied into
    a hash table); only when two hashes meet are the values themselves counted."""
    return col.hash().n_unique() == len(col) or col.n_unique() == len(col)


def _named_ids(events: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """The distinct prompt ids and response ids that resolved events name."""
    return (events.get_column("prompt_id").unique(),
            pl.concat([events["response_a_id"], events["response_b_id"]]).unique())


EVENT_SCHEMA = {"kind": pl.String, **{c: COMPARISONS_SCHEMA[c] for c in HASH_COLUMNS}}
# How the SQLite column-wise read gets each event column (see workbench.bulk.ColumnQuery). The
# strength is read exactly, row-wise, only for the events that have one: SQLite renders a
# REAL as text with 15 digits, which does not always round-trip. The event ids are not read:
# a chunk reads the ids ``lo < event_id <= hi`` of a rowid table in rowid order, and when it
# holds ``hi - lo`` rows (SQLite numbers rows ``max + 1``, and events are never deleted) they are
# ``lo + 1 .. hi``; a chunk with gaps is read row by row.
_EVENT_COLUMNS = {
    "kind": ("kind", "token"), "comparison_id": ("comparison_id", "id"),
    "prompt_id": ("prompt_id", "id"), "response_a_id": ("response_a_id", "id"), "response_b_id": ("response_b_id", "id"),
    "label": ("label", "token"), "annotator_id": ("annotator_id", "token"), "shown_left": ("shown_left", "token"),
    "source": ("source", "token"), "gold": ("gold", "int"), "rationale": ("rationale", "text"),
    "duration_ms": ("duration_ms", "int"), "created_at": ("created_at", "id"),
}
EVENT_CHUNK = 125_000  # events per column-wise read
TEXT_CHUNK = 50_000  # prompts or responses per column-wise read (by id; a scan reads twice as many per chunk)
SCAN_TEXTS_PER_EVENT = 2.0  # scan the prompts and responses tables whole when they hold at most this many rows per event


class _SqliteFetchers:
    """Column-wise SQLite reads run by worker threads: on the transaction's own connection and,
    for a database file, on a second read connection, so that SQLite works on two cores (it runs
    without the GIL) while the calling thread parses what came back.

    Both connections read the same rows: label events up to a watermark fixed before either
    transaction began (events are never updated or deleted, and every event up to the watermark
    was committed when it was fixed), and prompts and responses, which are never updated or
    deleted and were committed with or before the events that name them. While the workers run,
    the caller does not use the transaction's cursor; :meth:`close` (the ``with`` block's end)
    waits for them.
    """

    def __init__(self, store: "Store", tx: Any):
        import queue
        import threading

        self._jobs: queue.Queue = queue.Queue()
        self._closed = False
        self._extra: Any = None
        cursors = [tx._cur]
        db = store.engine.url.database
        if db and db != ":memory:" and "mode=memory" not in db:
            try:
                self._extra = store.engine.connect()
                self._extra_tx = self._extra.begin()
                cursors.append(self._extra.connection.driver_connection.cursor())
            except Exception:  # noqa: BLE001  (one connection still does the whole read)
                self._close_extra()
        self._cursors = cursors
        self._threads = [threading.Thread(target=self._work, args=(c,), name=f"wb-read-{i}", daemon=True)
                         for i, c in enumerate(cursors)]
        for t in self._threads:
            t.start()

    def _work(self, cursor: Any) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(cursor))
            except BaseException as exc:  # noqa: BLE001  (handed to whoever waits on the future)
                fut.set_exception(exc)

    def submit(self, fn: Any) -> Any:
        """Run ``fn(cursor)`` on a worker; returns a ``concurrent.futures.Future``."""
        from concurrent.futures import Future

        fut: Future = Future()
        if self._closed:  # the workers are gone: the caller runs it, on the transaction's cursor
            try:
                fut.set_result(fn(self._cursors[0]))
            except BaseException as exc:  # noqa: BLE001
                fut.set_exception(exc)
            return fut
        self._jobs.put((fn, fut))
        return fut

    def submit_read(self, query: Any) -> Any:
        """``query.fetch`` (a :class:`workbench.bulk.ColumnQuery`) on a worker; :func:`_taken`
        hands its row over once, so that the future does not keep the row's bytes alive after
        they are parsed (a read's texts are the largest part of a snapshot's memory)."""
        return self.submit(lambda cursor: [query.fetch(cursor)])

    def close(self) -> None:
        """Let the workers finish what was submitted, and stop them (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        if self._extra is not None:
            try:
                self._cursors[-1].close()
            finally:
                self._close_extra()

    def _close_extra(self) -> None:
        try:
            if getattr(self, "_extra_tx", None) is not None:
                self._extra_tx.rollback()
        finally:
            self._extra.close()
            self._extra = None

    def __enter__(self) -> "_SqliteFetchers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _taken(fut: Any) -> tuple:
    """The row of a :meth:`_SqliteFetchers.submit_read` future, taken out of it (once)."""
    return fut.result().pop()


def _event_query(lo: int, hi: int) -> Any:
    from .bulk import ColumnQuery

    return ColumnQuery("FROM label_events WHERE event_id > ? AND event_id <= ?", (lo, hi),
                       _EVENT_COLUMNS, scalars=["sum(strength IS NOT NULL)", "min(event_id)", "max(event_id)"])


def _event_frame(frame: pl.DataFrame, exact_strength: pl.DataFrame | None) -> pl.DataFrame:
    """A parsed event chunk in :data:`EVENT_SCHEMA`, its strengths from ``exact_strength``
    (``event_id``, ``strength`` of the events that have one; ``None``: no event has one)."""
    frame = frame.with_columns(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in ("label", "shown_left")
    )
    if exact_strength is not None:
        frame = frame.join(exact_strength.select(pl.col("event_id").cast(pl.Int64), pl.col("strength").cast(pl.Float64)),
                           on="event_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("strength"))
    if not frame["event_id"].is_sorted():
        frame = frame.sort("event_id")
    return frame.select([_cast_column(frame[c], t) for c, t in EVENT_SCHEMA.items()])


def _exact_strength_job(lo: int, hi: int) -> Any:
    def job(cursor: Any) -> pl.DataFrame:
        cursor.execute("SELECT event_id, strength FROM label_events WHERE event_id > ? AND event_id <= ? AND strength IS NOT NULL", (lo, hi))
        rows = cursor.fetchall()
        return pl.DataFrame(rows, schema={"event_id": pl.Int64, "strength": pl.Float64}, orient="row")
    return job


def _rowwise_events(tx: Any, lo: int, hi: int) -> pl.DataFrame:
    """Events ``lo < event_id <= hi`` read row by row (Python objects, so floats stay exact)."""
    frame = tx.frame(
        f"SELECT kind, {', '.join(HASH_COLUMNS)} FROM label_events WHERE event_id > ? AND event_id <= ? ORDER BY event_id",
        (lo, hi),
    )
    return frame.select([_cast_column(frame[c], t) for c, t in EVENT_SCHEMA.items()]) if frame.height else pl.DataFrame(schema=EVENT_SCHEMA)


def _read_events(tx: Any, watermark: int, fetch: "_SqliteFetchers | None" = None) -> pl.DataFrame:
    """Every event with ``event_id <= watermark``, in event order (:data:`EVENT_SCHEMA`)."""
    if tx.dialect != "sqlite" or tx._adbc is not None:
        return tx.frame(
            f"SELECT kind, {', '.join(HASH_COLUMNS)} FROM label_events WHERE event_id <= {tx.ph(0)} ORDER BY event_id",
            (watermark,), schema=EVENT_SCHEMA,
        )
    if fetch is None:
        with _SqliteFetchers(tx.store, tx) as own:
            return _sqlite_events(tx, own, _submit_events(own, watermark))
    return _sqlite_events(tx, fetch, _submit_events(fetch, watermark))


def _submit_events(fetch: "_SqliteFetchers", watermark: int) -> list[tuple[int, int, Any, Any]]:
    jobs = []
    for lo in range(0, watermark, EVENT_CHUNK):
        hi = min(lo + EVENT_CHUNK, watermark)
        q = _event_query(lo, hi)
        jobs.append((lo, hi, q, fetch.submit_read(q)))
    return jobs


def _sqlite_events(tx: Any, fetch: "_SqliteFetchers", jobs: list[tuple[int, int, Any, Any]]) -> pl.DataFrame:
    """Parse the event chunks of :func:`_submit_events` as they arrive. A chunk whose column-wise
    read cannot be trusted (see :class:`workbench.bulk.ColumnQuery`) is read row by row after
    the workers are done with the transaction's cursor."""
    from .bulk import ColumnReadError

    parsed: list[Any] = []
    for lo, hi, q, fut in jobs:
        try:
            frame, (n_strength, first, last) = q.parse(_taken(fut))
            if frame.height and (frame.height != hi - lo or first != lo + 1 or last != hi):
                raise ColumnReadError(f"events {lo + 1}..{hi}: {frame.height} rows (ids {first}..{last})")
            frame = frame.with_columns(pl.int_range(lo + 1, lo + 1 + frame.height, dtype=pl.Int64).alias("event_id"))
            parsed.append((frame, fetch.submit(_exact_strength_job(lo, hi)) if n_strength else None))
        except (ColumnReadError, pl.exceptions.PolarsError):
            parsed.append(None)
    parts = []
    for (lo, hi, _, _), got in zip(jobs, parsed, strict=True):
        frame = None
        if got is not None:
            try:
                frame = _event_frame(got[0], got[1].result() if got[1] is not None else None)
            except (ColumnReadError, pl.exceptions.PolarsError):
                frame = None
        parts.append((lo, hi, frame))
    if any(frame is None for _, _, frame in parts):
        fetch.close()  # the workers are done: the cursor is the caller's again
        parts = [(lo, hi, frame if frame is not None else _rowwise_events(tx, lo, hi)) for lo, hi, frame in parts]
    return pl.concat([frame for _, _, frame in parts]) if parts else pl.DataFrame(schema=EVENT_SCHEMA)


def _cast_column(col: pl.Series, dtype: Any) -> pl.Series:
    from .bulk import _cast

    return col if col.dtype == dtype else _cast(col, dtype)


_PROMPT_COLUMNS = {"prompt_id": ("p.prompt_id", "id"), "prompt": ("p.text", "text"), "messages": ("p.messages", "text"), "category": ("p.category", "text")}
_RESPONSE_COLUMNS = {"response_id": ("r.response_id", "id"), "text": ("r.text", "text"), "model": ("r.model", "text")}
PROMPT_SCHEMA = {"prompt_id": pl.String, "prompt": pl.String, "messages": pl.String, "category": pl.String}
RESPONSE_SCHEMA = {"response_id": pl.String, "text": pl.String, "model": pl.String}


def _sqlite_resolved(store: "Store", tx: Any, watermark: int, exclude_annotators: Sequence[str], sources: Sequence[str] | None) -> _Resolved:
    """:func:`_read_resolved` on SQLite: events and texts read column-wise by two workers.

    When the prompts and responses tables are not much larger than the events (an import's
    store), they are read whole, in rowid order, while the events are still being read (a scan
    costs about half as much per row as a look-up by id), and the rows that no event names are
    dropped afterwards; otherwise the named rows are looked up by id once the events are
    resolved. Either way the result is the same.
    """
    extents = {t: int(tx.scalar(f"SELECT coalesce(max(rowid), 0) FROM {t}")) for t in ("prompts", "responses")}
    scan = watermark > 0 and sum(extents.values()) <= SCAN_TEXTS_PER_EVENT * watermark
    with _SqliteFetchers(store, tx) as fetch:
        event_jobs = _submit_events(fetch, watermark)
        text_jobs = _submit_text_scans(fetch, extents) if scan else None
        events = _resolve(_sqlite_events(tx, fetch, event_jobs), exclude_annotators, sources)
        if events.height == 0:
            return _Resolved(events, pl.DataFrame(), pl.DataFrame(), watermark)
        try:
            if text_jobs is not None:
                prompts, responses, texts = _scanned_texts(text_jobs, events)
            else:
                prompts, responses, texts = _texts_by_id(fetch, *_named_ids(events))
            return _Resolved(events, prompts, responses, watermark, texts)
        except Exception:  # noqa: BLE001  (ColumnReadError, a text too big for one read, ...): row-wise below
            pass
    prompts, responses = _read_texts(tx, *_named_ids(events))
    return _Resolved(events, prompts, responses, watermark)


_TEXT_TABLES = {"prompts": ("p", "prompt_id", _PROMPT_COLUMNS, PROMPT_SCHEMA), "responses": ("r", "response_id", _RESPONSE_COLUMNS, RESPONSE_SCHEMA)}


def _submit_text_scans(fetch: "_SqliteFetchers", extents: dict[str, int]) -> dict[str, list[tuple[Any, Any]]]:
    """Column-wise reads of the whole prompts and responses tables, in rowid ranges."""
    from .bulk import ColumnQuery

    jobs: dict[str, list[tuple[Any, Any]]] = {}
    step = 2 * TEXT_CHUNK
    for table, (alias, _, columns, _) in _TEXT_TABLES.items():
        jobs[table] = []
        for lo in range(0, extents[table], step):
            q = ColumnQuery(f"FROM {table} AS {alias} WHERE {alias}.rowid > ? AND {alias}.rowid <= ?", (lo, lo + step), columns)
            jobs[table].append((q, fetch.submit_read(q)))
    return jobs


def _text_frames(table: str, jobs: list[tuple[Any, Any]]) -> tuple[pl.DataFrame, Any]:
    """The parsed rows of text reads, and (responses) their texts as one Arrow array."""
    import pyarrow as pa

    schema = _TEXT_TABLES[table][3]
    frames, arrays = [], []
    for q, fut in jobs:
        frame, _, arrow = q.parse(_taken(fut), keep_arrow=True)
        frames.append(frame)
        if table == "responses":
            arrays.append(arrow["text"])
        del frame, arrow
    texts = None
    if table == "responses":
        if len(arrays) > 1:  # the reads' own texts are let go: the frame's texts are the joined array's
            texts = pa.concat_arrays(arrays)
            frames = [f.drop("text") for f in frames]
            del arrays
        else:
            texts = arrays[0] if arrays else pa.array([], pa.large_string())
    out = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    if table == "responses" and "text" not in out.columns:
        out = out.with_columns(pl.Series("text", texts, dtype=pl.String))
    out = out.select([pl.col(c).cast(t) for c, t in schema.items()])
    return out, texts


def _scanned_texts(jobs: dict[str, list[tuple[Any, Any]]], events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    """The rows of whole-table reads that the events name (each once, in rowid order).

    When the events name as many distinct ids as the table has rows (an import's store), every
    row is named, since every id an event names is in the table (a foreign key, and
    :func:`_assemble_for_file` finds each one or raises); counting distinct 64-bit hashes of the
    ids tells so without collecting the distinct ids (as many distinct hashes as rows means at
    least as many distinct ids). Otherwise the named ids are collected and the rows filtered.
    """
    from .bulk import ColumnReadError

    out = []
    for table, named in (("prompts", [events["prompt_id"]]), ("responses", [events["response_a_id"], events["response_b_id"]])):
        frame, texts = _text_frames(table, jobs[table])
        key = _TEXT_TABLES[table][1]
        if pl.concat([col.hash() for col in named]).n_unique() == frame.height:
            out.append((frame, texts))
            continue
        wanted = pl.concat(named).unique()
        if frame.height != len(wanted):
            keep = frame.select(pl.col(key).is_in(wanted.implode())).to_series()
            frame = frame.filter(keep)
            if texts is not None:
                import pyarrow as pa

                texts = texts.filter(pa.array(keep.to_arrow()))
        if frame.height != len(wanted):
            raise ColumnReadError(f"{table}: {frame.height} of {len(wanted)} named rows found")
        out.append((frame, texts))
    return out[0][0], out[1][0], out[1][1]


def _texts_by_id(fetch: "_SqliteFetchers", prompt_ids: pl.Series, response_ids: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    """Rows of the prompts and responses tables by id: the ids go in as one JSON array per chunk."""
    from .bulk import ColumnQuery, ColumnReadError

    jobs = {}
    for table, wanted in (("prompts", prompt_ids), ("responses", response_ids)):
        alias, key, columns, _ = _TEXT_TABLES[table]
        keys = wanted.sort().to_list()  # in key order, the look-ups walk the index once (3x faster than at random)
        jobs[table] = []
        for i in range(0, len(keys), TEXT_CHUNK):
            q = ColumnQuery(f"FROM json_each(?) AS j CROSS JOIN {table} AS {alias} ON {alias}.{key} = j.value",
                            (json.dumps(keys[i:i + TEXT_CHUNK]),), columns)
            jobs[table].append((q, fetch.submit_read(q)))
    (prompts, _), (responses, texts) = _text_frames("prompts", jobs["prompts"]), _text_frames("responses", jobs["responses"])
    if prompts.height != len(prompt_ids) or responses.height != len(response_ids):
        raise ColumnReadError(f"{prompts.height} prompts for {len(prompt_ids)} ids, {responses.height} responses for {len(response_ids)} ids")
    return prompts, responses, texts


def _read_texts(tx: Any, prompt_ids: pl.Series, response_ids: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The prompts and responses with these ids (each once, in no particular order), row-wise."""
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
ID_COLUMNS = ("prompt_id", "response_a_id", "response_b_id")  # the ids a comparison names
SPLICED_KEYS = ("prompt", "response")  # dictionaries of _assemble_for_file whose pages parquet_parts makes
FILE_ORDER = ["created_at", "comparison_id"]  # the rows' order in a version's file, and in its hash


def _assemble_for_file(events: pl.DataFrame, prompts: pl.DataFrame, responses: pl.DataFrame, response_texts: Any = None) -> tuple[pl.DataFrame, Any, dict]:
    """What :func:`_assemble` gives, as Arrow, without copying a text into every row that shows it.

    Returns the resolved events in file order (:data:`FILE_ORDER`) but for their
    :data:`ID_COLUMNS`, the comparisons table as Arrow and its statistics (the hash of the two
    is :func:`_assembled_hash`). The text columns (``prompt``,
    ``response_a``, ``response_b``, and the contents and roles of ``prompt_messages``) are
    dictionary arrays over the distinct prompts and responses (row positions from joins on
    ids), as are ``category`` and the models; written to Parquet (without the Arrow schema) it
    reads as :func:`_assemble`'s table, in the same row order. So do the id columns, whose
    values Parquet then hashes once per prompt or response instead of once per row.
    ``response_texts``: ``responses["text"]`` as an Arrow array (as the SQLite reader made it),
    used as the dictionary as it is instead of copying the texts out of polars again.
    """
    import numpy as np
    import pyarrow as pa

    prompts = prompts.with_columns(
        pl.when(pl.col("messages").is_null())
        .then(pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content"))))
        .otherwise(pl.col("messages").str.json_decode(MESSAGES))
        .alias("prompt_messages")
    )
    ordered = events if _in_file_order(events) else events[_file_order(events)]
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
        """``values[indices]`` as a dictionary array. Arrow's writer takes a dictionary of
        distinct values without nulls (else it writes the column plain): the same text from two
        models is two responses, and a null category gets a null index. The texts of
        :data:`SPLICED_KEYS` are taken as they are (repeats too): their dictionary pages are
        made by :func:`workbench.parquet_parts.plain_dictionary_page`, and a Parquet
        dictionary may repeat a value."""
        if key not in distinct_of:
            if values.null_count() == 0 and (key in SPLICED_KEYS or _all_distinct(values)):
                arrow = response_texts if key == "response" and response_texts is not None else None
                distinct_of[key] = (None, arrow if arrow is not None else texts(values))
            else:
                distinct = values.drop_nulls().unique(maintain_order=True)
                position = values.to_frame("v").join(distinct.to_frame("v").with_row_index("u"), on="v", how="left", maintain_order="left").get_column("u")
                distinct_of[key] = (position, texts(distinct))
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
        pa.Array.from_buffers(pa.int64(), len(offsets), [None, pa.py_buffer(offsets)]),  # pa.array(numpy) would import pandas
        pa.StructArray.from_arrays(
            [dictionary(positions, pl.Series(child.field(f)), f) for f in ("role", "content")], names=["role", "content"]
        ),
    )
    # The events' own id texts go with the events: the table's id columns are dictionaries
    # over the prompts' and responses' ids, and the hash reads them there (_assembled_hash).
    narrow = ordered.select([pl.col(c).cast(t) for c, t in EVENT_SCHEMA.items() if c in COMPARISONS_SCHEMA and c not in ID_COLUMNS])
    response_text, response_models = responses["text"], responses["model"]
    columns = {
        "prompt_id": dictionary(p_idx, prompts["prompt_id"], "prompt_id"),
        "response_a_id": dictionary(a_idx, responses["response_id"], "response_id"),
        "response_b_id": dictionary(b_idx, responses["response_id"], "response_id"),
        "prompt": dictionary(p_idx, prompts["prompt"], "prompt"),
        "prompt_messages": messages,
        "category": dictionary(p_idx, prompts["category"], "category"),
        "response_a": dictionary(a_idx, response_text, "response"),
        "model_a": dictionary(a_idx, response_models, "model"),
        "response_b": dictionary(b_idx, response_text, "response"),
        "model_b": dictionary(b_idx, response_models, "model"),
    }
    # string views as they are (compat_level oldest would copy every value into a large_string array)
    table = narrow.select([c for c in narrow.columns if c not in columns]).to_arrow(compat_level=pl.CompatLevel.newest())
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


def _file_order(frame: pl.DataFrame) -> pl.Series:
    """The row positions that put ``frame`` in :data:`FILE_ORDER`: a stable sort by
    ``created_at`` of the rows sorted by ``comparison_id`` (two one-column sorts cost a third of
    one sort on both columns)."""
    by_id = frame.select(pl.col("comparison_id").arg_sort()).to_series()
    then = frame.get_column("created_at").gather(by_id).to_frame().select(pl.arg_sort_by("created_at", maintain_order=True)).to_series()
    return by_id.gather(then)


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
    return _digest(canon.height, lambda name: _canonical_bytes(canon.get_column(name)))


def _digest(n_rows: int, canonical: Any) -> str:
    """SHA-256 of :data:`HASH_PREFIX`, the row count and each of the :data:`HASH_COLUMNS`
    (its name and ``canonical(name)``: its canonical bytes as buffers, rows in file order)."""
    h = hashlib.sha256(HASH_PREFIX)
    h.update(n_rows.to_bytes(8, "little"))
    for name in HASH_COLUMNS:
        h.update(name.encode("ascii") + b"\n")
        for part in canonical(name):
            h.update(part)
    return h.hexdigest()


def _assembled_hash(narrow: pl.DataFrame, table: Any) -> str:
    """:func:`content_hash` of what :func:`_assemble_for_file` gives: the events in file order
    (``narrow``), their :data:`ID_COLUMNS` from the table's dictionary columns."""
    return _digest(narrow.height, lambda name: _canonical_dictionary(table.column(name)) if name in ID_COLUMNS
                   else _canonical_bytes(narrow.get_column(name)))


def _canonical_dictionary(column: Any) -> Any:
    """The canonical bytes of a text column held as a dictionary (an Arrow chunked array of
    dictionary arrays over text, with no null value): each row's value is looked up
    :data:`HASH_BLOCK` rows at a time."""
    import numpy as np

    from .parquet_parts import row_lengths

    for chunk in column.chunks:
        if chunk.null_count or chunk.dictionary.null_count:
            raise ValueError("an id column holds a null")
    chunks = [c for c in column.chunks if len(c)]
    yield np.concatenate([row_lengths(c) for c in chunks]).astype("<i8", copy=False) if chunks else b""
    for chunk in chunks:
        for start in range(0, len(chunk), HASH_BLOCK):
            yield _values_bytes(chunk.slice(start, HASH_BLOCK).dictionary_decode())


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


HASH_BLOCK = 1 << 16  # values of a text column made into canonical bytes at a time


def _canonical_bytes(col: pl.Series) -> Any:
    """The canonical bytes of a column (see :func:`content_hash`), as buffers to hash one after
    another. A text column's values are copied out of polars' string views
    :data:`HASH_BLOCK` at a time, into memory that Arrow's allocator hands back for the next
    block, instead of into one copy of the whole column."""

    if col.dtype == pl.String:
        return _canonical_text(col)
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


def _values_bytes(block: Any) -> Any:
    """The bytes of an Arrow text array's values back to back (the array has no nulls; string
    views too, which :func:`workbench.parquet_parts.plain_dictionary_page` does not take)."""
    import numpy as np
    import pyarrow as pa

    if block.type != pa.large_string():
        block = block.cast(pa.large_string())
    offsets = np.frombuffer(block.buffers()[1], dtype=np.int64)[block.offset:block.offset + len(block) + 1]
    data = block.buffers()[2]
    return memoryview(data)[offsets[0]:offsets[-1]] if data is not None and len(block) else b""


def _canonical_text(col: pl.Series) -> Any:
    yield col.str.len_bytes().cast(pl.Int64).fill_null(-1).to_numpy().astype("<i8", copy=False)
    if col.null_count():
        col = col.fill_null("")
    for chunk in col.to_frame().to_arrow().column(0).chunks:  # string views, as polars holds them
        for at in range(0, len(chunk), HASH_BLOCK):
            yield _values_bytes(chunk.slice(at, HASH_BLOCK))


STATISTICS_COLUMNS = ["category", "model_a", "model_b", "label", "strength", "annotator_id", "shown_left", "source", "gold", "duration_ms", "created_at"]
PLAIN_COLUMNS = {"comparison_id", "strength", "duration_ms", "created_at"}  # no dictionary: (almost) every value differs


ZSTD_COLUMNS = {"prompt", "prompt_messages", "response_a", "response_b"}  # the texts: zstd (level 1), the rest LZ4


def write_version_file(frame: Any, path: Any) -> None:
    """Write a comparisons table as Parquet: dictionary-encoded texts, zstd and LZ4 pages.

    A version repeats each prompt and response text in every comparison that shows it, so
    dictionary encoding (with a dictionary page large enough for the distinct texts) stores each
    text once per row group. The texts' pages are compressed with zstd at level 1, the other
    columns' with LZ4, both cheap to write and read. Columns whose values are (nearly) all
    distinct are written plain, and min/max statistics are kept only for the short columns (for
    the texts they cost more than the rest of the write and serve no query). On the
    1M-comparison benchmark (``benchmarks/store.py``) the file is 114 MiB (165 MiB with LZ4
    everywhere, 272 MiB with zstd on plain pages); zstd on the texts costs about 0.1 s more
    compression than LZ4 and saves 50 MiB of writing, which on the benchmark's machine made the
    write faster and steadier. ``frame`` is a polars frame or an Arrow table (whose text
    columns may already be dictionary arrays, see :func:`_assemble_for_file`); the Arrow schema
    is not stored, so every reader sees plain string columns. ``path``: a file path or an Arrow
    output stream. :func:`_write_version_file_in_parts` writes the same pages on several threads.
    """
    import pyarrow.parquet as pq

    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    leaves = _parquet_leaves(table.schema)
    texts = [p for p in leaves if p.split(".")[0] in ZSTD_COLUMNS]
    pq.write_table(
        table, path, dictionary_pagesize_limit=1 << 30, store_schema=False,
        compression={p: "zstd" if p in texts else "lz4" for p in leaves},
        compression_level={p: 1 for p in texts} or None,
        use_dictionary=[p for p in leaves if p.split(".")[0] not in PLAIN_COLUMNS],
        write_statistics=[p for p in leaves if p.split(".")[0] in STATISTICS_COLUMNS],
    )


def _empty_file(arrow_schema: Any) -> Any:
    """A Parquet file (an Arrow buffer) of no rows with this schema, written as
    :func:`write_version_file` writes (its footer holds the schema as the writer lays it out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_batches([], schema=arrow_schema), buf, store_schema=False)  # empty_table() would import pandas
    return buf.getvalue()


def _parquet_leaves(arrow_schema: Any) -> list[str]:
    """The Parquet column paths (``prompt_messages.list.element.content``...) of an Arrow schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_metadata(pa.BufferReader(_empty_file(arrow_schema)))
    return [meta.schema.column(i).path for i in range(meta.num_columns)]


WRITE_PARTS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 4))
PARTS_FROM_ROWS = 100_000  # smaller tables are written by one writer (a part costs a few ms)


def _page_compression(column: str) -> tuple[str, int | None]:
    """How :func:`write_version_file` compresses a top-level column's pages: (codec, level)."""
    return ("zstd", 1) if column in ZSTD_COLUMNS else ("lz4", None)


def _write_version_file_in_parts(table: Any, path: str | os.PathLike, n_parts: int | None = None, pages: dict | None = None) -> str:
    """:func:`write_version_file` with the columns shared among ``n_parts`` writers (one per
    core, from :data:`PARTS_FROM_ROWS` rows), joined into one file (see
    :mod:`workbench.parquet_parts`); returns the file's SHA-256. The dictionary pages of the
    texts and ids (the prompts', and the responses', which both response columns share) are
    made once each, beside the writers, and put in the file in place of the writers' own
    (``pages``: those begun already, see :func:`workbench.parquet_parts.write_in_parts`)."""
    from .parquet_parts import footer_of, write_in_parts
    from .store import file_sha256

    table = table.to_arrow() if isinstance(table, pl.DataFrame) else table
    if n_parts is None:
        n_parts = WRITE_PARTS if table.num_rows >= PARTS_FROM_ROWS else 1
    splice = {c: _page_compression(c) for c in table.column_names if c not in STATISTICS_COLUMNS}  # (a stand-in's values would make the statistics)
    write_in_parts(table, path, write_version_file, n_parts, lambda: footer_of(_empty_file(table.schema))[0], splice, pages)
    return file_sha256(path)


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


_TRIM: list = []  # glibc's malloc_trim, once looked up (None where there is none)


def release_free_memory() -> None:
    """Hand the memory that C's allocator (glibc) holds free back to the kernel.

    A snapshot's reads free much of what they allocate (SQLite's aggregate buffers, the rows'
    bytes once parsed), and glibc keeps it, on the reader threads' arenas, where only glibc's
    own later allocations can use it; polars and Arrow allocate with allocators of their own,
    and take fresh pages from the kernel instead. On a virtual machine a page that the host has
    not backed, or has taken back while it lay free (a balloon's free page reporting), costs
    some 3 ms per MB on first touch (on this project's benchmark machine), against a tenth of
    that for a page freed a moment ago. So between the reads and the write the snapshot hands
    glibc's free pages back, for the other allocators to fault in warm. A no-op where the C
    library has no ``malloc_trim``."""
    if not _TRIM:
        trim = None
        try:
            import ctypes

            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            trim = None
        _TRIM.append(trim)
    if _TRIM[0] is not None:
        _TRIM[0](0)


def _early_pages(parts: _Resolved) -> dict:
    """The response texts' dictionary page, begun on a thread of its own as soon as the texts
    are read (for a file written in parts): it is the largest piece of the write, and it is
    made while the comparisons are assembled, which keeps a core busy for the most part alone.
    :func:`_assemble_for_file` uses those very texts as the response columns' dictionary, so
    :func:`workbench.parquet_parts.write_in_parts` takes this page for both columns."""
    import threading
    from concurrent.futures import Future

    from .parquet_parts import page_key, plain_dictionary_page

    texts = parts.response_texts
    if texts is None or parts.events.height < PARTS_FROM_ROWS or texts.null_count or len(texts) == 0:
        return {}
    compression, level = _page_compression("response_a")
    page: Future = Future()

    def make() -> None:
        try:
            page.set_result(plain_dictionary_page(texts, compression, level))
        except BaseException as exc:  # noqa: BLE001  (the writer then makes the file whole)
            page.set_exception(exc)

    threading.Thread(target=make, name="wb-page", daemon=True).start()
    return {page_key(texts, compression, level): page}


def take_snapshot(
    store: "Store",
    name: str,
    *,
    description: str | None = None,
    exclude_annotators: Sequence[str] = (),
    sources: Sequence[str] | None = None,
) -> Version:
    from .store import StoreError, utcnow

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError("a version name is 1-128 letters, digits, '_', '.', '-', starting with a letter or digit")
    with store._read() as conn:
        if conn.execute(sa.select(schema.versions.c.name).where(schema.versions.c.name == name)).first():
            raise StoreError(f"version name {name!r} is taken; names are never reused")
        parent_row = conn.execute(sa.select(schema.versions.c.name).order_by(schema.versions.c.created_at.desc()).limit(1)).first()
    parts = _read_resolved(store, None, exclude_annotators, sources)
    release_free_memory()
    events, prompts, responses, watermark = parts.events, parts.prompts, parts.responses, parts.watermark
    pages = _early_pages(parts)
    n_rows = events.height
    if n_rows:
        frame, table, stats = _assemble_for_file(events, prompts, responses, parts.response_texts)
    else:
        frame = table = pl.DataFrame(schema=COMPARISONS_SCHEMA)
        stats = frame_stats(frame)
    del events, prompts, responses, parts
    release_free_memory()  # what the reads and the assembly freed (the events' id texts among it)
    vdir = store.files_dir / "versions"
    vdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=vdir, suffix=".parquet.tmp")
    os.close(fd)
    try:
        # The file is written by threads (Arrow's writer holds no GIL) while the content hash
        # is computed here.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wb-parquet") as pool:
            written = pool.submit(_write_version_file_in_parts, table, tmp, None, pages)
            try:
                digest = _assembled_hash(frame, table) if n_rows else content_hash(frame)
            finally:
                sha = written.result()
        del table
        final = vdir / f"{digest[:32]}-{sha[:12]}.parquet"
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    filters = {"exclude_annotators": list(exclude_annotators), "sources": list(sources) if sources is not None else None}
    row = dict(
        name=name, content_hash=digest, watermark=watermark, parent=parent_row[0] if parent_row else None,
        path=str(final.relative_to(store.files_dir)), file_sha256=sha, n_comparisons=n_rows,
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
