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
            if content_hash(frame) != self.hash:
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
    """The resolved label events at a watermark, and the prompts and responses they name."""
    from .bulk import transaction

    if watermark is None:
        watermark = current_watermark(store)
    with transaction(store, write=False) as tx:
        w = (int(watermark),)
        events = tx.frame(
            f"SELECT kind, {', '.join(HASH_COLUMNS)} FROM label_events WHERE event_id <= {tx.ph(0)} ORDER BY event_id",
            w, schema={"kind": pl.String, **{c: COMPARISONS_SCHEMA[c] for c in HASH_COLUMNS}},
        )
        if events.height and events["comparison_id"].n_unique() < events.height:
            events = events.unique(subset="comparison_id", keep="last", maintain_order=True)
        events = events.filter(pl.col("kind") == "label").drop("kind")  # rows came in event order
        if exclude_annotators:
            events = events.filter(~pl.col("annotator_id").is_in(list(exclude_annotators)))
        if sources is not None:
            events = events.filter(pl.col("source").is_in(list(sources)))
        if events.height == 0:
            return events, pl.DataFrame(), pl.DataFrame(), watermark
        prompt_ids = events.select(pl.col("prompt_id").unique())
        response_ids = pl.concat([events["response_a_id"], events["response_b_id"]]).unique().to_frame("response_id")
        tmp_p = tx.temp_table(prompt_ids)
        tmp_r = tx.temp_table(response_ids)
        temp = "temp." if tx.dialect == "sqlite" else ""
        prompts = tx.frame(
            f"SELECT p.prompt_id, p.text AS prompt, p.messages, p.category FROM {temp}{tmp_p} t JOIN prompts p ON p.prompt_id = t.prompt_id",
            schema={"prompt_id": pl.String, "prompt": pl.String, "messages": pl.String, "category": pl.String},
        )
        responses = tx.frame(
            f"SELECT r.response_id, r.text, r.model FROM {temp}{tmp_r} t JOIN responses r ON r.response_id = t.response_id",
            schema={"response_id": pl.String, "text": pl.String, "model": pl.String},
        )
    return events, prompts, responses, watermark


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


def _assemble_for_file(events: pl.DataFrame, prompts: pl.DataFrame, responses: pl.DataFrame) -> tuple[pl.DataFrame, Any]:
    """What :func:`_assemble` gives, without copying a text into every row that shows it.

    Returns the comparisons table less the three text columns (the hash and the statistics
    need no texts) and the full table as Arrow, whose text columns are dictionary arrays over
    the distinct prompt and response texts (row positions from the joins on ids). Written to
    Parquet, that is the same table as ``_assemble``'s, in the same row order.
    """
    import pyarrow as pa

    prompts = prompts.with_row_index("_p").with_columns(
        pl.when(pl.col("messages").is_null())
        .then(pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content"))))
        .otherwise(pl.col("messages").str.json_decode(MESSAGES))
        .alias("prompt_messages")
    )
    responses = responses.with_row_index("_r")
    ordered = events.sort(["created_at", "comparison_id"])
    frame = (
        ordered.join(prompts.select("prompt_id", "_p", "prompt_messages", "category"), on="prompt_id", how="left", maintain_order="left")
        .join(responses.select(pl.col("response_id").alias("response_a_id"), pl.col("_r").alias("_a"), pl.col("model").alias("model_a")),
              on="response_a_id", how="left", maintain_order="left")
        .join(responses.select(pl.col("response_id").alias("response_b_id"), pl.col("_r").alias("_b"), pl.col("model").alias("model_b")),
              on="response_b_id", how="left", maintain_order="left")
    )
    narrow = frame.select([pl.col(c).cast(t) for c, t in COMPARISONS_SCHEMA.items() if c not in TEXT_COLUMNS])
    table = narrow.to_arrow()
    prompt_texts = prompts.get_column("prompt").cast(pl.String).to_arrow()
    response_texts = responses.get_column("text").cast(pl.String).to_arrow()
    text_of = {
        "prompt": (frame.get_column("_p"), prompt_texts),
        "response_a": (frame.get_column("_a"), response_texts),
        "response_b": (frame.get_column("_b"), response_texts),
    }
    columns = []
    for name in COMPARISONS_SCHEMA:
        if name in text_of:
            index, texts = text_of[name]
            columns.append(pa.DictionaryArray.from_arrays(index.cast(pl.Int32).to_arrow(), texts))
        else:
            columns.append(table.column(name))
    return narrow, pa.table(columns, names=list(COMPARISONS_SCHEMA))


def content_hash(frame: pl.DataFrame) -> str:
    """SHA-256 over the canonical rows: the event columns, sorted by comparison id."""
    canon = frame.select(HASH_COLUMNS).sort("comparison_id").with_columns(
        pl.col("strength").cast(pl.String),
        pl.col("created_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
        pl.col("gold").cast(pl.Int8),
    )
    h = hashlib.sha256(b"workbench-comparisons-v1\n")
    buf = io.BytesIO()  # the CSV's UTF-8 bytes, written once (no str to decode and encode again)
    canon.write_csv(buf, include_header=True)
    h.update(buf.getbuffer())
    return h.hexdigest()


def write_version_file(frame: Any, path: str | os.PathLike) -> None:
    """Write a comparisons table as Parquet: dictionary-encoded columns, LZ4 pages.

    A version repeats each prompt and response text in every comparison that shows it, so
    dictionary encoding (with a dictionary page large enough for the distinct texts) stores each
    text once per row group; LZ4 then costs little to write and read. Readers see plain string
    columns (the dictionary is an encoding, not a type). On the 1M-comparison benchmark
    (``benchmarks/store.py``) the file is 165 MiB instead of 272 MiB (zstd on plain pages) and
    reads back in about a quarter of the time. ``frame``
    is a polars frame or an Arrow table (whose text columns may already be dictionary arrays,
    see :func:`_assemble_for_file`); the Arrow schema is not stored, so every reader sees
    plain string columns.
    """
    import pyarrow.parquet as pq

    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    pq.write_table(
        table, path, compression="lz4", use_dictionary=True, dictionary_pagesize_limit=1 << 30,
        write_statistics=True, store_schema=False,
    )


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
        frame, table = _assemble_for_file(events, prompts, responses)
    else:
        frame = table = pl.DataFrame(schema=COMPARISONS_SCHEMA)
    digest = content_hash(frame)
    stats = frame_stats(frame)
    vdir = store.files_dir / "versions"
    vdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=vdir, suffix=".parquet.tmp")
    os.close(fd)
    try:
        write_version_file(table, tmp)
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
