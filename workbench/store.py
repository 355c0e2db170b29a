"""The versioned preference store: append-only label events in SQLite or PostgreSQL.

``workbench.open()`` gives the embedded default (a SQLite file in WAL mode, ``./workbench.db`` or
``$WORKBENCH_DB``); ``workbench.open("postgresql+psycopg://...")`` gives the same API on a server.

Writes are transactions: an import writes all of its rows or none; a label with a client token
that the store has already seen is a no-op, so a resubmitted request records one label.
"""

from __future__ import annotations

import contextlib
import functools
import datetime as dt
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import polars as pl
import sqlalchemy as sa
from sqlalchemy import event

from . import ids, schema
from .frames import INPUT_SCHEMA, InvalidRows, find_invalid, to_input_frame
from .schema import LABELS, ROLES, SOURCES

DEFAULT_DB = "workbench.db"
_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"


class StoreError(RuntimeError):
    """A request the store refuses (unknown ids, a reused name, a tampered file...)."""


class NotFound(StoreError, LookupError):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _as_utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def resolve_url(url: str | os.PathLike | None) -> str:
    """A SQLAlchemy URL from a URL, a file path or ``None`` (``$WORKBENCH_DB`` or the default)."""
    if url is None:
        url = os.environ.get("WORKBENCH_DB") or DEFAULT_DB
    url = str(url)
    if url == ":memory:":
        return "sqlite://"  # an in-memory store (tests, notebooks); its files go to ./workbench_files
    if "://" in url:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url
    return "sqlite:///" + str(Path(url).expanduser().resolve())


@dataclass(frozen=True)
class LabelReceipt:
    """What the store acknowledges for one label event."""

    event_id: int
    comparison_id: str
    created: bool  # False when the client token had already been recorded (a resubmission)


@dataclass(frozen=True)
class ImportReport:
    path: str
    format: str
    rows_read: int
    rows_rejected: int
    labels_added: int
    prompts_added: int
    responses_added: int
    annotators_added: int
    rejects_path: str | None = None
    import_id: str | None = None
    rejects: Any = field(default=None, repr=False, compare=False)  # polars frame: line, field, reason

    def __str__(self) -> str:
        s = (
            f"{self.path} ({self.format}): {self.rows_read} rows read, {self.labels_added} labels, "
            f"{self.prompts_added} prompts, {self.responses_added} responses, "
            f"{self.annotators_added} annotators added"
        )
        if self.rows_rejected:
            s += f"; {self.rows_rejected} rows rejected -> {self.rejects_path}"
        return s


class Store:
    """A preference store. Create with :func:`workbench.open`."""

    def __init__(self, url: str | os.PathLike | None = None, files_dir: str | os.PathLike | None = None):
        self.url = resolve_url(url)
        self.engine = _make_engine(self.url)
        self.dialect = self.engine.dialect.name
        schema.metadata.create_all(self.engine)
        self._checkpoints: list[Any] = []  # WAL checkpoints running after bulk writes (threads)
        self.files_dir = self._init_files_dir(files_dir)

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.wait_for_checkpoint()
        self.engine.dispose()

    def wait_for_checkpoint(self) -> None:
        """Wait until the WAL checkpoints that large bulk writes left running have ended (SQLite).

        A bulk write of many rows returns once it has committed; copying its pages from the WAL
        into the database file runs on in a thread (see
        :func:`workbench.bulk._checkpoint_in_background`). :meth:`close` waits as well.
        """
        while self._checkpoints:
            self._checkpoints.pop().join()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def transaction(self, write: bool = True) -> contextlib.AbstractContextManager[sa.Connection]:
        """A SQLAlchemy connection in one transaction, for tables that live beside the store's
        (the annotation UI's assignments and sessions): committed on exit, rolled back on an
        error. ``write=True`` takes the write lock first (``BEGIN IMMEDIATE`` on SQLite), so
        concurrent writers queue instead of failing."""
        return self._write() if write else self._read()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite, so writers queue, never deadlock)."""
        with self.engine.connect().execution_options(wb_write=True) as conn:
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def _init_files_dir(self, files_dir: str | os.PathLike | None) -> Path:
        with self._write() as conn:
            row = conn.execute(sa.select(schema.meta.c.value).where(schema.meta.c.key == "files_dir")).first()
            if files_dir is None and os.environ.get("WORKBENCH_FILES"):
                files_dir = os.environ["WORKBENCH_FILES"]
            if files_dir is None and row is not None:
                path = Path(row[0])
            elif files_dir is not None:
                path = Path(files_dir).expanduser().resolve()
            elif self.dialect == "sqlite":
                db = self.engine.url.database
                path = Path(db + ".files") if db and db != ":memory:" else Path.cwd() / "workbench_files"
            else:
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.engine.url.host}_{self.engine.url.database}")
                path = Path.cwd() / "workbench_files" / name
            if row is None:
                conn.execute(schema.meta.insert().values(key="files_dir", value=str(path)))
                conn.execute(
                    schema.meta.insert().values(key="schema_version", value=str(schema.SCHEMA_VERSION))
                )
        (path / "versions").mkdir(parents=True, exist_ok=True)
        return path

    @functools.cached_property
    def _statements(self) -> dict[str, Any]:
        """The single-label path's statements, built once per store: constructing a SQLAlchemy
        statement and its cache key costs more than SQLite's work for one label."""
        e, a, r = schema.label_events, schema.annotators, schema.responses
        return {
            "event_by_token": sa.select(e).where(e.c.client_token == sa.bindparam("token")),
            "annotator": sa.select(a.c.annotator_id).where(a.c.annotator_id == sa.bindparam("annotator_id")),
            "responses": sa.select(r.c.response_id, r.c.prompt_id).where(
                r.c.response_id.in_(sa.bindparam("response_ids", expanding=True))),
            "insert_event": self._insert_ignore(e).values(
                {c.name: sa.bindparam(c.name) for c in e.c if c.name != "event_id"}).returning(e.c.event_id),
        }

    def _insert_ignore(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()

    # ------------------------------------------------------------------ entities
    def add_prompt(self, content: str | Sequence[dict], *, category: str | None = None, metadata: dict | None = None) -> str:
        """Add a prompt (a text or a list of ``{role, content}`` messages); returns its id."""
        row = _prompt_row(content, category, metadata)
        with self._write() as conn:
            conn.execute(self._insert_ignore(schema.prompts).values(**row))
        return row["prompt_id"]

    def add_response(self, prompt_id: str, text: str, *, model: str | None = None, metadata: dict | None = None) -> str:
        """Add a response to a prompt; returns its content-addressed id."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a response needs a non-empty text")
        for name, value in (("prompt_id", prompt_id), ("response text", text), ("model", model)):
            _check_storable(name, value)
        rid = ids.response_id_of(prompt_id, text, model)
        with self._write() as conn:
            if conn.execute(sa.select(schema.prompts.c.prompt_id).where(schema.prompts.c.prompt_id == prompt_id)).first() is None:
                raise NotFound(f"unknown prompt {prompt_id!r}")
            conn.execute(
                self._insert_ignore(schema.responses).values(
                    response_id=rid, prompt_id=prompt_id, text=text, model=model,
                    metadata=json.dumps(metadata) if metadata else None, created_at=utcnow(),
                )
            )
        return rid

    def add_annotator(self, annotator_id: str, *, name: str | None = None, role: str = "annotator", secret_hash: str | None = None) -> str:
        """Add an annotator (or leave an existing one as it is); returns the id."""
        if not isinstance(annotator_id, str) or not annotator_id.strip() or len(annotator_id) > 200:
            raise ValueError("an annotator id is a non-empty string of at most 200 characters")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        _check_storable("annotator id", annotator_id)
        _check_storable("annotator name", name)
        with self._write() as conn:
            conn.execute(
                self._insert_ignore(schema.annotators).values(
                    annotator_id=annotator_id, name=name or annotator_id, role=role,
                    secret_hash=secret_hash, active=True, created_at=utcnow(),
                )
            )
        return annotator_id

    def set_annotator(self, annotator_id: str, **fields: Any) -> None:
        """Change an annotator's name, role, secret hash or active flag."""
        allowed = {"name", "role", "secret_hash", "active"}
        if set(fields) - allowed:
            raise ValueError(f"unknown annotator fields: {sorted(set(fields) - allowed)}")
        if "role" in fields and fields["role"] not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        _check_storable("annotator name", fields.get("name"))
        with self._write() as conn:
            n = conn.execute(
                schema.annotators.update().where(schema.annotators.c.annotator_id == annotator_id).values(**fields)
            ).rowcount
        if not n:
            raise NotFound(f"unknown annotator {annotator_id!r}")

    def annotator(self, annotator_id: str) -> dict | None:
        with self._read() as conn:
            row = conn.execute(sa.select(schema.annotators).where(schema.annotators.c.annotator_id == annotator_id)).mappings().first()
        return dict(row) if row else None

    def annotators(self) -> pl.DataFrame:
        t = schema.annotators
        return self._frame(sa.select(t.c.annotator_id, t.c.name, t.c.role, t.c.active, t.c.created_at).order_by(t.c.annotator_id))

    def prompts(self) -> pl.DataFrame:
        t = schema.prompts
        return self._frame(sa.select(t.c.prompt_id, t.c.kind, t.c.text, t.c.messages, t.c.category, t.c.metadata, t.c.created_at).order_by(t.c.created_at, t.c.prompt_id))

    def responses(self, prompt_id: str | None = None) -> pl.DataFrame:
        t = schema.responses
        q = sa.select(t.c.response_id, t.c.prompt_id, t.c.text, t.c.model, t.c.metadata, t.c.created_at)
        if prompt_id is not None:
            q = q.where(t.c.prompt_id == prompt_id)
        return self._frame(q.order_by(t.c.created_at, t.c.response_id))

    def _frame(self, query: Any) -> pl.DataFrame:
        with self._read() as conn:
            result = conn.execute(query)
            cols = list(result.keys())
            rows = result.fetchall()
        frame = pl.DataFrame([list(r) for r in rows], schema=cols, orient="row", infer_schema_length=None) if rows else pl.DataFrame({c: [] for c in cols})
        for c in cols:
            if c.endswith("_at") and frame[c].dtype != pl.Null and frame.height:
                frame = frame.with_columns(pl.col(c).dt.replace_time_zone(None).dt.replace_time_zone("UTC") if frame[c].dtype.time_zone is None else pl.col(c).dt.convert_time_zone("UTC"))  # type: ignore[union-attr]
        return frame

    # ------------------------------------------------------------------ labels
    def add_label(
        self,
        prompt_id: str,
        response_a_id: str,
        response_b_id: str,
        label: str,
        annotator_id: str,
        *,
        strength: float | None = None,
        shown_left: str | None = None,
        source: str = "human",
        gold: bool = False,
        rationale: str | None = None,
        duration_ms: int | None = None,
        client_token: str | None = None,
        created_at: dt.datetime | None = None,
    ) -> LabelReceipt:
        """Append one label event (the UI's path). Idempotent on ``client_token``."""
        _check_label_fields(label, strength, shown_left, source, rationale, duration_ms, client_token)
        for name, value in (("prompt_id", prompt_id), ("response_a_id", response_a_id), ("response_b_id", response_b_id),
                            ("annotator_id", annotator_id)):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a text, got {type(value).__name__}")
            _check_storable(name, value)
        if response_a_id == response_b_id:
            raise ValueError("a comparison needs two different responses")
        token = client_token or f"tok:{uuid.uuid4().hex}"
        row = dict(
            comparison_id=ids.comparison_id_of(token), kind="label", supersedes=None,
            prompt_id=prompt_id, response_a_id=response_a_id, response_b_id=response_b_id,
            label=label, strength=strength, annotator_id=annotator_id, shown_left=shown_left,
            source=source, gold=bool(gold), rationale=rationale, duration_ms=duration_ms,
            created_at=_as_utc(created_at) or utcnow(), client_token=token, import_id=None,
        )
        if self.dialect == "sqlite":
            return self._add_label_sqlite(row)
        with self._write() as conn:
            existing = self._event_by_token(conn, token)
            if existing is not None:
                return self._resubmitted(existing, row)
            self._check_refs(conn, prompt_id, (response_a_id, response_b_id), annotator_id)
            event_id = self._insert_event(conn, row)
            if event_id is None:  # PostgreSQL: another transaction recorded this token meanwhile
                return self._resubmitted(self._event_by_token(conn, token), row)  # type: ignore[arg-type]
        return LabelReceipt(int(event_id), row["comparison_id"], True)

    def _add_label_sqlite(self, row: dict) -> LabelReceipt:
        """:meth:`add_label` on SQLite: one statement in the write transaction, on the driver's
        connection itself.

        SQLite lets one writer in at a time, and a writer that finds the file locked sleeps in
        SQLite's busy handler (1, 2, 5, 10 ... ms), so whatever the single-label path does while
        it holds the lock, and all the CPU it takes from the other writers on a small machine,
        becomes their wait. So the insert checks the references itself (``INSERT ... SELECT
        ... WHERE``: the annotator exists, both responses answer the prompt) and a resubmitted
        client token is found by the insert (``ON CONFLICT DO NOTHING``). Only when it inserts
        nothing is the reason looked up, as the SQLAlchemy path looks it up (an event with that
        token, else :meth:`_check_refs` for a clear error). The write goes to ``sqlite3``
        directly: through SQLAlchemy each statement costs some 50 us of Python, more than
        SQLite's own work for a label. The row is the one the SQLAlchemy path writes: each value
        goes through its column type's bind processor.
        """
        sql = self._label_sql
        params = [row[c] if convert is None else convert(row[c]) for c, convert in sql["columns"]]
        params += [row["annotator_id"], row["response_a_id"], row["response_b_id"], row["prompt_id"]]
        fairy = self.engine.raw_connection()
        try:
            con = fairy.driver_connection
            _begin_immediate(con)
            try:
                got = con.execute(sql["insert"], params).fetchone()
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        finally:
            fairy.close()
        if got is not None:
            return LabelReceipt(int(got[0]), row["comparison_id"], True)
        # Nothing inserted: a resubmission, or a reference that is not there (the SQLAlchemy
        # path's own checks say which). Events, annotators and the prompt of a response are never
        # changed nor deleted, so what is read now is what the insert saw.
        with self._read() as conn:
            existing = self._event_by_token(conn, row["client_token"])
            if existing is not None:
                return self._resubmitted(existing, row)
            self._check_refs(conn, row["prompt_id"], (row["response_a_id"], row["response_b_id"]), row["annotator_id"])
        raise StoreError("the label was not recorded")  # not reached: one of the checks above fails

    @functools.cached_property
    def _label_sql(self) -> dict[str, Any]:
        e, dialect = schema.label_events, self.engine.dialect
        names = [c.name for c in e.c if c.name != "event_id"]
        return {
            "insert": f"INSERT INTO label_events ({', '.join(names)}) SELECT {', '.join('?' * len(names))} "
                      "WHERE EXISTS (SELECT 1 FROM annotators WHERE annotator_id = ?) "
                      "AND (SELECT count(*) FROM responses WHERE response_id IN (?, ?) AND prompt_id = ?) = 2 "
                      "ON CONFLICT DO NOTHING RETURNING event_id",
            "columns": [(c, e.c[c].type.dialect_impl(dialect).bind_processor(dialect)) for c in names],
        }

    def _insert_event(self, conn: sa.Connection, row: dict) -> int | None:
        """Insert one event; ``None`` when its client token is already taken (a lost race)."""
        got = conn.execute(self._statements["insert_event"], row).first()
        return int(got[0]) if got else None

    def correct(self, comparison_id: str, label: str, annotator_id: str, *, client_token: str | None = None, **fields: Any) -> LabelReceipt:
        """Record a corrected label for a comparison: a new event that supersedes the latest one."""
        return self._supersede(comparison_id, annotator_id, client_token, kind="label", label=label, **fields)

    def retract(self, comparison_id: str, annotator_id: str, *, client_token: str | None = None) -> LabelReceipt:
        """Withdraw a comparison's label (an undo): a ``retract`` event, never a deletion."""
        return self._supersede(comparison_id, annotator_id, client_token, kind="retract", label=None)

    def undo_last(self, annotator_id: str, *, client_token: str | None = None) -> LabelReceipt | None:
        """Retract the annotator's most recent live label; ``None`` if there is nothing to undo."""
        e = schema.label_events
        with self._read() as conn:
            if client_token:
                existing = self._event_by_token(conn, client_token)
                if existing is not None:
                    return LabelReceipt(int(existing["event_id"]), existing["comparison_id"], False)
            later = schema.label_events.alias("later")
            superseded = sa.exists().where(later.c.comparison_id == e.c.comparison_id, later.c.event_id > e.c.event_id)
            row = conn.execute(
                sa.select(e.c.comparison_id)
                .where(e.c.annotator_id == annotator_id, e.c.kind == "label", ~superseded)
                .order_by(e.c.event_id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return self.retract(row[0], annotator_id, client_token=client_token)

    def _supersede(self, comparison_id: str, annotator_id: str, client_token: str | None, *, kind: str, label: str | None, **fields: Any) -> LabelReceipt:
        e = schema.label_events
        if kind == "label":
            _check_label_fields(label, fields.get("strength"), fields.get("shown_left"), fields.get("source", "human"),
                                fields.get("rationale"), fields.get("duration_ms"), client_token)
        unknown = set(fields) - {"strength", "shown_left", "source", "gold", "rationale", "duration_ms"}
        if unknown:
            raise ValueError(f"unknown label fields: {sorted(unknown)}")
        token = client_token or f"tok:{uuid.uuid4().hex}"
        with self._write() as conn:
            if self.dialect == "postgresql":
                # One supersede per comparison at a time (SQLite writers are serialized anyway),
                # so two concurrent undos cannot both retract the same label.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:c))"), {"c": comparison_id})
            existing = self._event_by_token(conn, token)
            if existing is not None:
                if existing["comparison_id"] != comparison_id or existing["kind"] != kind:
                    raise StoreError(f"client token {token!r} was already used for a different event (event {existing['event_id']})")
                return LabelReceipt(int(existing["event_id"]), existing["comparison_id"], False)
            last = conn.execute(
                sa.select(e).where(e.c.comparison_id == comparison_id).order_by(e.c.event_id.desc()).limit(1)
            ).mappings().first()
            if last is None:
                raise NotFound(f"unknown comparison {comparison_id!r}")
            if last["kind"] == "retract":
                raise StoreError(f"comparison {comparison_id} is already retracted")
            self._check_refs(conn, None, (), annotator_id)
            row = dict(last)
            row.pop("event_id")
            row.update(
                kind=kind, supersedes=last["event_id"], label=label, annotator_id=annotator_id,
                created_at=utcnow(), client_token=token, import_id=None,
                source=fields.get("source", "human"),
            )
            if kind == "retract":
                row.update(strength=None, rationale=None, duration_ms=None)
            for k in ("strength", "shown_left", "gold", "rationale", "duration_ms"):
                if k in fields:
                    row[k] = fields[k]
            event_id = self._insert_event(conn, row)
            if event_id is None:
                existing = self._event_by_token(conn, token)
                return LabelReceipt(int(existing["event_id"]), existing["comparison_id"], False)  # type: ignore[index]
        return LabelReceipt(int(event_id), comparison_id, True)

    def _event_by_token(self, conn: sa.Connection, token: str) -> dict | None:
        row = conn.execute(self._statements["event_by_token"], {"token": token}).mappings().first()
        return dict(row) if row else None

    @staticmethod
    def _resubmitted(existing: dict, row: dict) -> LabelReceipt:
        same = all(existing[k] == row[k] for k in ("prompt_id", "response_a_id", "response_b_id", "label", "annotator_id"))
        if not same:
            raise StoreError(
                f"client token {row['client_token']!r} was already used for a different label "
                f"(event {existing['event_id']}); a token names one submission"
            )
        return LabelReceipt(int(existing["event_id"]), existing["comparison_id"], False)

    def _check_refs(self, conn: sa.Connection, prompt_id: str | None, response_ids: Sequence[str], annotator_id: str) -> None:
        if conn.execute(self._statements["annotator"], {"annotator_id": annotator_id}).first() is None:
            raise NotFound(f"unknown annotator {annotator_id!r} (add it with store.add_annotator)")
        if prompt_id is None:
            return
        found = dict(conn.execute(self._statements["responses"], {"response_ids": list(response_ids)}).all())
        for rid in response_ids:
            if rid not in found:
                raise NotFound(f"unknown response {rid!r}")
            if found[rid] != prompt_id:
                raise StoreError(f"response {rid} does not answer prompt {prompt_id}")

    def events(self, *, since: int = 0, annotator_id: str | None = None) -> pl.DataFrame:
        """The raw label events (append-only log), oldest first."""
        e = schema.label_events
        q = sa.select(*[c for c in e.c if c.name != "import_id"]).where(e.c.event_id > since)
        if annotator_id is not None:
            q = q.where(e.c.annotator_id == annotator_id)
        return self._frame(q.order_by(e.c.event_id))

    # ------------------------------------------------------------------ bulk
    def add_comparisons(
        self,
        frame: pl.DataFrame,
        *,
        source: str = "import",
        annotator_id: str = "import",
        path: str = "<frame>",
        format: str = "frame",
        file_sha256: str | None = None,
        rows_rejected: int = 0,
        rejects_path: str | None = None,
        skip_invalid: bool = False,
        allow_empty_responses: bool = False,  # fix(importers): LLMFAO/PandaLM hold empty model outputs
        chunk_rows: int | None = None,
    ) -> ImportReport:
        """Write many comparisons (texts, labels, annotators) in one transaction.

        ``frame`` has the columns of :data:`workbench.frames.INPUT_SCHEMA` (absent ones are null).
        Prompts and responses are content-addressed and labels carry deterministic client tokens,
        so writing the same frame twice adds nothing the second time.

        On SQLite a large frame is written in chunks of about ``chunk_rows`` rows (default
        :data:`workbench.bulk.PIPELINE_CHUNK_ROWS`), the next chunk's ids being computed while
        the current one is inserted (:func:`workbench.bulk.write_pipelined`): still one
        transaction, with the same rows, ids and rejects as writing it in one piece.
        """
        from . import bulk
        from .bulk import prepare_comparisons

        frame = to_input_frame({c: frame[c] for c in frame.columns if c in INPUT_SCHEMA}, n=frame.height)
        frame = frame.with_columns(
            pl.col("source").fill_null(source),
            pl.col("annotator_id").fill_null(annotator_id),
            pl.col("gold").fill_null(False),
        )
        # Without skip_invalid the rows are checked in a thread while they are written (no row is
        # dropped, so the writing needs no answer): a bad row stops the import before its commit,
        # with the same error, and the transaction rolls back. With skip_invalid, first.
        checked = _in_thread(find_invalid, frame, allow_empty_responses=allow_empty_responses)

        def all_rejects(more: pl.DataFrame) -> pl.DataFrame:
            rejects = checked.result()
            if more.height:
                rejects = pl.concat([rejects, more]).unique(subset=["line"], keep="first").sort("line")
            return rejects

        n_chunks = bulk.plan_chunks(self, frame, chunk_rows)
        if n_chunks > 1:
            prepared, more_rejects = bulk.prepare_for_chunks(frame)  # ids: chunk by chunk, below
        else:
            prepared, more_rejects = prepare_comparisons(frame)
        if skip_invalid or more_rejects.height:
            rejects = all_rejects(more_rejects)
            if rejects.height:
                if not skip_invalid:
                    raise InvalidRows(path, rejects)
                if n_chunks == 1:
                    prepared = prepared.filter(~pl.col("line").is_in(rejects["line"].implode()))
        else:
            rejects = pl.DataFrame(schema={"line": pl.Int64, "field": pl.String, "reason": pl.String})  # none so far
        import_id = "imp_" + uuid.uuid4().hex[:20]

        with bulk.transaction(self, check_references=False) as tx:  # references hold by construction
            try:
                if n_chunks > 1:
                    counts = bulk.write_pipelined(self, tx, prepared, rejects["line"], import_id, n_chunks)
                else:
                    counts = bulk.write_prepared(self, tx, prepared, import_id)
            except Exception as exc:  # a bad row can break the writing first: the error names the row
                if not skip_invalid and (late := all_rejects(more_rejects)).height:
                    raise InvalidRows(path, late) from exc
                raise
            if not skip_invalid:
                rejects = all_rejects(more_rejects)
                if rejects.height:
                    raise InvalidRows(path, rejects)  # rolls the transaction back
            tx.insert_ignore(schema.imports, pl.DataFrame([dict(
                import_id=import_id, path=path, format=format, file_sha256=file_sha256,
                rows_read=frame.height + rows_rejected, rows_rejected=rows_rejected + rejects.height,
                labels_added=counts["labels"], prompts_added=counts["prompts"],
                responses_added=counts["responses"], created_at=utcnow(),
            )], schema={"import_id": pl.String, "path": pl.String, "format": pl.String, "file_sha256": pl.String,
                        "rows_read": pl.Int64, "rows_rejected": pl.Int64, "labels_added": pl.Int64,
                        "prompts_added": pl.Int64, "responses_added": pl.Int64, "created_at": pl.Datetime("us", "UTC")}))
        return ImportReport(
            path=path, format=format, rows_read=frame.height + rows_rejected,
            rows_rejected=rows_rejected + rejects.height, labels_added=counts["labels"],
            prompts_added=counts["prompts"], responses_added=counts["responses"],
            annotators_added=counts["annotators"], rejects_path=rejects_path, import_id=import_id,
            rejects=rejects,
        )

    def add_candidates(self, frame: pl.DataFrame) -> dict[str, int]:
        """Add prompts and candidate responses without labels (what annotators will compare).

        Columns: ``prompt`` (or ``prompt_messages`` as JSON), optional ``category``, ``response``,
        optional ``model`` and ``metadata`` (a JSON object as text, e.g. a hidden true quality).
        """
        from .bulk import transaction, write_candidates

        with transaction(self, check_references=False) as tx:  # references hold by construction
            return write_candidates(self, tx, frame)

    def import_file(
        self,
        path: str | os.PathLike,
        format: str = "auto",
        *,
        mapping: dict[str, str] | None = None,
        skip_invalid: bool = False,
        rejects_path: str | os.PathLike | None = None,
        annotator_id: str | None = None,
        source: str = "import",
    ) -> ImportReport:
        """Import a file or folder of preference data (see :mod:`workbench.importers`)."""
        from .importers import import_into

        return import_into(self, path, format, mapping=mapping, skip_invalid=skip_invalid,
                           rejects_path=rejects_path, annotator_id=annotator_id, source=source)

    # ------------------------------------------------------------------ versions
    def snapshot(self, name: str, *, description: str | None = None, exclude_annotators: Sequence[str] = (), sources: Sequence[str] | None = None) -> "Version":
        """Fix the current labels into a named, immutable, hashed version."""
        from .versions import take_snapshot

        return take_snapshot(self, name, description=description, exclude_annotators=exclude_annotators, sources=sources)

    def version(self, ref: str) -> "Version":
        """A version by name, by content hash or by a unique prefix of its hash."""
        from .versions import load_version

        return load_version(self, ref)

    def versions(self) -> pl.DataFrame:
        t = schema.versions
        return self._frame(
            sa.select(t.c.name, t.c.content_hash, t.c.n_comparisons, t.c.watermark, t.c.parent, t.c.description, t.c.created_at).order_by(t.c.created_at, t.c.name)
        ).rename({"content_hash": "hash"})

    def diff(self, old: str, new: str) -> pl.DataFrame:
        """Comparisons added, removed or changed between two versions."""
        from .versions import diff_versions

        return diff_versions(self.version(old), self.version(new))

    def live(self) -> pl.DataFrame:
        """The current labels, resolved as a snapshot would, without writing a version."""
        from .versions import resolve_comparisons

        return resolve_comparisons(self, None, watermark=None)[0]

    def stats(self) -> dict[str, int]:
        """Counts of what the store holds now."""
        e = schema.label_events
        with self._read() as conn:
            def count(t: sa.Table) -> int:
                return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            latest = sa.select(sa.func.max(e.c.event_id).label("m")).group_by(e.c.comparison_id).subquery()
            live = conn.execute(
                sa.select(sa.func.count()).select_from(e.join(latest, latest.c.m == e.c.event_id)).where(e.c.kind == "label")
            ).scalar_one()
            return {
                "prompts": count(schema.prompts), "responses": count(schema.responses),
                "annotators": count(schema.annotators), "label_events": count(e),
                "live_comparisons": int(live), "versions": count(schema.versions), "runs": count(schema.runs),
            }

    # ------------------------------------------------------------------ runs
    def start_run(self, kind: str, version: "Version | str", config: Any = None, *, name: str | None = None, parent_run_id: str | None = None) -> "Run":
        """Record that a run (reward model, policy, diagnostics...) started on a version."""
        from .runs import start_run

        return start_run(self, kind, version, config, name=name, parent_run_id=parent_run_id)

    def record_run(self, kind: str, version: "Version | str", config: Any = None, *, metrics: dict | None = None, artifact_path: str | None = None, name: str | None = None, status: str = "completed", parent_run_id: str | None = None) -> "Run":
        run = self.start_run(kind, version, config, name=name, parent_run_id=parent_run_id)
        run.finish(metrics=metrics, artifact_path=artifact_path, status=status)
        return run

    def run(self, run_id: str) -> "Run":
        from .runs import load_run

        return load_run(self, run_id)

    def runs(self, version: "Version | str | None" = None, kind: str | None = None) -> pl.DataFrame:
        from .runs import list_runs

        return list_runs(self, version, kind)

    # ------------------------------------------------------------------ settings
    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read() as conn:
            row = conn.execute(sa.select(schema.settings.c.value).where(schema.settings.c.key == key)).first()
        return json.loads(row[0]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        t = schema.settings
        with self._write() as conn:
            conn.execute(t.delete().where(t.c.key == key))
            conn.execute(t.insert().values(key=key, value=json.dumps(value)))


def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` started in a thread; returns a ``concurrent.futures.Future``."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001  (handed to whoever waits on the future)
                fut.set_exception(exc)

    threading.Thread(target=run, name="workbench-check-rows", daemon=True).start()
    return fut


def _check_label_fields(label: Any, strength: Any, shown_left: Any, source: Any, rationale: Any, duration_ms: Any, client_token: Any) -> None:
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (0 <= float(strength) < float("inf"))):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    if shown_left is not None and shown_left not in ("a", "b"):
        raise ValueError(f"shown_left must be 'a' or 'b', got {shown_left!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if rationale is not None and (not isinstance(rationale, str) or len(rationale) > 20_000):
        raise ValueError("rationale must be a text of at most 20,000 characters")
    for name, text in (("rationale", rationale), ("client_token", client_token)):
        _check_storable(name, text)
    if duration_ms is not None and (isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms < 0):
        raise ValueError(f"duration_ms must be an integer >= 0, got {duration_ms!r}")
    if client_token is not None and (not isinstance(client_token, str) or not client_token or len(client_token) > 200):
        raise ValueError("client_token must be a non-empty text of at most 200 characters")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_storable(name: str, text: Any) -> None:
    """A text both databases store as it is: no NUL character (PostgreSQL's text cannot hold one)
    and no lone surrogate (not UTF-8)."""
    if isinstance(text, str) and _UNSTORABLE.search(text):
        raise ValueError(f"{name} contains a NUL character or a lone surrogate")


def _prompt_row(content: Any, category: str | None, metadata: dict | None) -> dict:
    if isinstance(content, str):
        if not content.strip():
            raise ValueError("a prompt needs a non-empty text")
        messages, text = None, content
    else:
        messages = ids.canonical_messages(content)
        text = ids.as_text_prompt(messages)
        if text is not None:
            messages = None
        else:
            text = ids.render_messages(messages)
    key = ids.prompt_key(None if messages else text, messages)
    _check_storable("prompt", text)
    _check_storable("category", category)
    return dict(
        prompt_id=ids.prompt_id_of(key), kind="messages" if messages else "text", text=text,
        messages=json.dumps(messages, ensure_ascii=False) if messages else None,
        category=category, metadata=json.dumps(metadata) if metadata else None, created_at=utcnow(),
    )


BUSY_TIMEOUT_MS = 60_000  # how long a SQLite statement waits for a lock before it fails
QUICK_TRIES = 10  # sub-millisecond tries for the write lock before SQLite's busy handler takes over
QUICK_WAIT = 0.0001  # seconds between them


def _begin_immediate(con: Any) -> None:
    """``BEGIN IMMEDIATE`` on a ``sqlite3`` connection: a few quick tries, then SQLite's wait.

    SQLite's busy handler, the wait a locked statement goes through, sleeps 1, 2, 5, 10, 15, 20,
    25 ... ms between its tries. The single-label path holds the write lock some 50 us, so a
    writer that finds it taken mostly finds it free again well within the first millisecond;
    sleeping a whole one lets the writers behind it in first, and with 8 writers on two cores the
    unlucky one went on losing through 10, 15 and 20 ms sleeps (1% of labels took over 18 ms).
    So the lock is tried ``QUICK_TRIES`` times ``QUICK_WAIT`` apart (``busy_timeout = 0``: a
    try that finds the lock taken returns at once), and only then does SQLite's handler wait,
    as before, up to :data:`BUSY_TIMEOUT_MS`. Polling longer at this pace costs the holder CPU
    time on a small machine, and made every label slower when measured.
    """
    import sqlite3
    import time

    con.execute("PRAGMA busy_timeout = 0")
    try:
        for _ in range(QUICK_TRIES):
            try:
                con.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
            time.sleep(QUICK_WAIT)
    finally:
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    con.execute("BEGIN IMMEDIATE")


def _make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, poolclass=sa.pool.QueuePool if path and path != ":memory:" else None)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("wb_write") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


from .runs import Run  # noqa: E402  (re-exported for type hints)
from .versions import Version  # noqa: E402
