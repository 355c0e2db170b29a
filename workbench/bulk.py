"""Bulk writes: an input frame becomes prompt, response, annotator and label-event rows.

The work is vectorized where it can be (polars), hashing runs once per unique prompt, response
and label, and the rows go to the database in one transaction as Arrow (ADBC: a temporary table
and one ``INSERT ... SELECT`` per table, ``COPY`` on PostgreSQL), with a DBAPI fallback.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import polars as pl
import sqlalchemy as sa

from . import ids, schema

if TYPE_CHECKING:
    from .store import Store

REJECTS_SCHEMA = {"line": pl.Int64, "field": pl.String, "reason": pl.String}
US = "\x1f"  # the unit separator between the values of a column read by ArrowTransaction.sqlite_columns


class ColumnReadError(RuntimeError):
    """A column-wise SQLite read that cannot be trusted; the caller falls back to a row-wise read."""


class ColumnQuery:
    """One SQLite query whose rows come back column-wise: a few Python objects per column.

    ``columns`` maps an output name to ``(sql expression, kind)``; ``from_sql`` is the
    ``FROM ... WHERE ...`` part; ``scalars`` are extra aggregate expressions (``sum(x)``).
    Each column comes back as one aggregate over all the rows (one ``SELECT`` that returns one
    row, so every column sees the rows in the same order):

    - ``"token"``: text that never holds the unit separator :data:`US` (ids, enum values,
      timestamps; ``NULL`` reads as ``""``): ``group_concat(x, US)``, split by polars;
    - ``"id"``: a token that is mostly longer than 12 bytes (ids, timestamps): the same
      ``group_concat``, fetched as bytes, and made into an Arrow string-view array whose views
      point into those bytes (see :func:`string_views`), so polars takes it without copying a
      value (splitting a text copies every value once more, and a 1M-row read touches some
      300 MB of fresh memory for that);
    - ``"int"``: an integer (``NULL`` kept), read as a token;
    - ``"text"``: any text (``NULL`` kept): the UTF-8 bytes of all values back to back and
      their byte lengths (-1 for ``NULL``), made into an Arrow string array without copying.

    Python's ``sqlite3`` makes a Python object of every value a row-wise read returns (14
    columns x 1M rows are 14M objects); this makes two per column, and SQLite builds the
    aggregates in :meth:`fetch` without holding the GIL, so a thread can fetch the next chunk
    while polars parses this one. A token that held the separator would come back as too many
    parts: :meth:`parse` checks the counts and raises :class:`ColumnReadError` (as :meth:`fetch`
    does on SQLite's "string or blob too big"), and the caller falls back to a row-wise read.
    """

    def __init__(self, from_sql: str, params: Sequence[Any], columns: dict[str, tuple[str, str]], scalars: Sequence[str] = ()):
        self.params, self.columns, self.n_scalars = tuple(params), columns, len(scalars)
        select = ["count(*)", *scalars]
        for expr, kind in columns.values():
            if kind in ("token", "int"):
                select.append(f"group_concat(ifnull({expr}, ''), '{US}')")  # a literal: char(31) would be a call per row
            elif kind == "id":
                select.append(f"CAST(group_concat(ifnull({expr}, ''), '{US}') AS BLOB)")
            elif kind == "text":
                select.append(f"CAST(group_concat(ifnull({expr}, ''), '') AS BLOB)")
                select.append(f"group_concat(ifnull(length(CAST({expr} AS BLOB)), -1))")
            else:
                raise ValueError(f"unknown column kind {kind!r}")
        self.sql = f"SELECT {', '.join(select)} {from_sql}"

    def fetch(self, cursor: Any) -> tuple:
        try:
            cursor.execute(self.sql, self.params)
            return cursor.fetchone()
        except Exception as exc:  # noqa: BLE001  (sqlite3.DataError: string or blob too big)
            raise ColumnReadError(str(exc)) from exc

    def parse(self, row: tuple, keep_arrow: bool = False) -> tuple[pl.DataFrame, list[Any]] | tuple[pl.DataFrame, list[Any], dict[str, Any]]:
        """The rows as a frame, and the scalars. ``keep_arrow``: also the ``"text"`` columns as
        the Arrow arrays they were made from (``name -> pyarrow.LargeStringArray``), which cost
        nothing more, while turning a polars column back into Arrow copies every text."""
        import numpy as np
        import pyarrow as pa

        n = int(row[0])
        arrow: dict[str, Any] = {}
        scalars = list(row[1:1 + self.n_scalars])
        out: dict[str, pl.Series] = {}
        i = 1 + self.n_scalars
        for name, (_, kind) in self.columns.items():
            if kind == "id":
                raw = row[i]
                i += 1
                try:
                    out[name] = pl.Series(name, string_views(raw or b"", n), dtype=pl.String)
                except ValueError as exc:
                    raise ColumnReadError(f"column {name}: {exc}") from exc
            elif kind in ("token", "int"):
                raw = row[i]
                i += 1
                if n:
                    parts = pl.Series(name, [raw or ""], dtype=pl.String).str.split(US).explode()
                else:
                    parts = pl.Series(name, [], dtype=pl.String)
                if len(parts) != n:
                    raise ColumnReadError(f"column {name}: {len(parts)} values for {n} rows")
                if kind == "int":
                    parts = pl.select(pl.when(parts == "").then(None).otherwise(parts).cast(pl.Int64).alias(name)).to_series()
                out[name] = parts
            else:
                blob, lengths = row[i], row[i + 1]
                i += 2
                lens = (pl.Series([lengths], dtype=pl.String).str.split(",").explode().cast(pl.Int64).to_numpy()
                        if n else np.zeros(0, dtype=np.int64))
                valid = lens >= 0
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.where(valid, lens, 0), out=offsets[1:])
                data = blob or b""
                if len(lens) != n or offsets[-1] != len(data):
                    raise ColumnReadError(f"column {name}: lengths do not add up")
                bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
                arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), bitmap)
                try:
                    arr.validate(full=True)  # valid UTF-8, as SQLite stored it
                except pa.ArrowInvalid as exc:
                    raise ColumnReadError(f"column {name}: {exc}") from exc
                out[name] = pl.Series(name, arr, dtype=pl.String)
                arrow[name] = arr
        if keep_arrow:
            return pl.DataFrame(out), scalars, arrow
        return pl.DataFrame(out), scalars


def string_views(data: bytes, n: int, sep: int = ord(US)) -> Any:
    """``n`` values joined by the byte ``sep`` (which no value holds) as an Arrow string-view
    array over ``data`` itself: each value is a 16-byte view (its length and, for a value of at
    most 12 bytes, the value itself; else its first 4 bytes and its offset in ``data``), so no
    value is copied. Raises ``ValueError`` unless there are ``n`` values of valid UTF-8."""
    import numpy as np
    import pyarrow as pa

    buf = np.frombuffer(data, dtype=np.uint8)
    if n == 0:
        if len(buf):
            raise ValueError(f"{len(buf)} bytes for no values")
        return pa.array([], pa.string_view())
    if len(buf) >= 2**31:
        raise ValueError("more than 2 GiB in one read")
    cuts = np.flatnonzero(buf == sep).astype(np.int32)
    if len(cuts) != n - 1:
        raise ValueError(f"{len(cuts) + 1} values for {n} rows")
    starts = np.empty(n, dtype=np.int32)
    starts[0] = 0
    np.add(cuts, 1, out=starts[1:])
    lengths = np.empty(n, dtype=np.int32)
    lengths[:-1] = cuts
    lengths[-1] = len(buf)
    lengths -= starts
    views = np.zeros((n, 4), dtype=np.int32)
    views[:, 0] = lengths
    as_bytes = views.view(np.uint8)
    inline = lengths <= 12
    if inline.any():  # the value itself, zero-padded, in bytes 4..15 of its view
        rows = np.flatnonzero(inline)
        width = int(lengths[rows].max()) if len(rows) else 0
        for k in range(width):
            has = rows[lengths[rows] > k]
            as_bytes[has, 4 + k] = buf[starts[has] + k]
    out_of_line = np.flatnonzero(~inline)
    if len(out_of_line):  # its first 4 bytes, buffer 0, its offset
        s = starts[out_of_line]
        for k in range(4):
            as_bytes[out_of_line, 4 + k] = buf[s + k]
        views[out_of_line, 3] = s
    arr = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), pa.py_buffer(data)])
    try:
        arr.validate(full=True)  # valid UTF-8
    except pa.ArrowInvalid as exc:
        raise ValueError(str(exc)) from exc
    return arr


def prepare_comparisons(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Add ids and tokens to an input frame; return it and the rows whose prompt is malformed."""
    frame, rejects = canonical_prompts(frame)
    frame = attach_ids(frame)
    return frame, _with_repeated_tokens(frame, rejects)


def _with_repeated_tokens(frame: pl.DataFrame, rejects: pl.DataFrame) -> pl.DataFrame:
    """``rejects`` plus every repeat (after the first) of a client token within the input."""
    given = frame.select("line", "client_token").filter(pl.col("client_token").is_not_null())
    dup = given.filter(pl.col("client_token").is_duplicated())
    more = [{"line": line, "field": "client_token", "reason": "client token repeated within the input"}
            for line in dup.get_column("line").to_list()[1:]]
    if more:
        rejects = pl.concat([rejects, pl.DataFrame(more, schema=REJECTS_SCHEMA)])
    return rejects


def canonical_prompts(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse and check each distinct ``prompt_messages`` JSON once; return the frame and its rejects.

    A conversation becomes its canonical JSON (and ``prompt`` its rendered text); a conversation
    of one user message becomes the text prompt it equals. After this, ``(prompt,
    prompt_messages)`` determines the prompt id, which is what lets :func:`write_pipelined`
    split an import by prompt.
    """
    rejects: list[dict[str, Any]] = []
    # Conversations: parse and validate once per distinct JSON text.
    msg_json = frame.get_column("prompt_messages").drop_nulls().unique().to_list()
    canon: dict[str, tuple[str | None, str | None]] = {}
    for raw in msg_json:
        try:
            messages = ids.canonical_messages(json.loads(raw))
            single = ids.as_text_prompt(messages)
            # "" marks a one-user-message conversation: stored as the text prompt it equals.
            canon[raw] = ("" if single is not None else json.dumps(messages, ensure_ascii=False, separators=(",", ":")),
                          single if single is not None else ids.render_messages(messages))
        except (ValueError, TypeError) as exc:
            canon[raw] = (None, str(exc))
    if canon:
        mapping = pl.DataFrame(
            {"prompt_messages": list(canon), "_msgs": [v[0] for v in canon.values()], "_msg_err": [v[1] if v[0] is None else None for v in canon.values()], "_rendered": [v[1] if v[0] is not None else None for v in canon.values()]},
            schema={"prompt_messages": pl.String, "_msgs": pl.String, "_msg_err": pl.String, "_rendered": pl.String},
        )
        frame = frame.join(mapping, on="prompt_messages", how="left", maintain_order="left")
        bad = frame.filter(pl.col("_msg_err").is_not_null())
        for line, err in bad.select("line", "_msg_err").iter_rows():
            rejects.append({"line": line, "field": "prompt_messages", "reason": err})
        frame = frame.with_columns(
            pl.when(pl.col("_msgs").is_not_null()).then(pl.col("_rendered")).otherwise(pl.col("prompt")).alias("prompt"),
            pl.when(pl.col("_msgs") != "").then(pl.col("_msgs")).otherwise(pl.lit(None, dtype=pl.String)).alias("prompt_messages"),
        ).drop("_msgs", "_msg_err", "_rendered")
    return frame, pl.DataFrame(rejects, schema=REJECTS_SCHEMA)


def attach_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Add prompt, response and comparison ids and client tokens to a :func:`canonical_prompts` frame.

    Rows that :func:`canonical_prompts` rejected are still there (they take part in the
    occurrence numbers of the tokens, as they always have) and are filtered out by the caller.
    """
    # Prompts: id = hash of the canonical form, once per distinct (text, conversation).
    pkeys = frame.select("prompt", "prompt_messages").unique()
    pkeys = pkeys.with_columns(
        pl.when(pl.col("prompt_messages").is_not_null())
        .then(pl.lit("messages\x1e") + pl.col("prompt_messages"))
        .otherwise(pl.lit("text\x1e") + pl.col("prompt").fill_null(""))
        .alias("_pkey")
    )
    pkeys = pkeys.with_columns(ids.digest_series(pkeys["_pkey"], "p").alias("prompt_id")).drop("_pkey")
    frame = frame.join(pkeys, on=["prompt", "prompt_messages"], how="left", nulls_equal=True, maintain_order="left")

    frame = _attach_response_ids(frame)

    # Labels: a deterministic token from what the label says and its occurrence number, so a
    # re-import adds nothing while two identical votes in one file stay two votes. The token is
    # ``ids.import_token(annotator, response a, response b, label, strength, shown_left, gold,
    # occurrence)`` and the comparison id shares its digest (``"c" + digest``).
    parts = ["annotator_id", "response_a_id", "response_b_id", "label", "strength", "shown_left", "gold"]
    sep = ids.SEP
    base = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in parts], separator=sep)
    frame = frame.with_columns(base.alias("_tkey"))
    frame = frame.with_columns(pl.col("_tkey") + sep + pl.int_range(pl.len()).over("_tkey").cast(pl.String))
    frame = frame.with_columns(ids.digest_series(frame.get_column("_tkey")).alias("_digest")).drop("_tkey")
    given = frame.get_column("client_token")
    if given.null_count() < frame.height:
        tokens = given.drop_nulls().unique()
        cids = pl.DataFrame({"client_token": tokens, "_given_cid": ids.digest_keys(tokens.to_list(), "c")},
                            schema={"client_token": pl.String, "_given_cid": pl.String})
        frame = frame.join(cids, on="client_token", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("_given_cid"))
    frame = frame.with_columns(
        pl.col("client_token").is_not_null().alias("_given_token"),
        pl.coalesce(pl.col("client_token"), pl.lit("imp:") + pl.col("_digest")).alias("client_token"),
        pl.coalesce(pl.col("_given_cid"), pl.lit("c") + pl.col("_digest")).alias("comparison_id"),
    ).drop("_digest", "_given_cid")
    return frame


def _attach_response_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``response_a_id``/``response_b_id``: hash(prompt id, model, text), once per distinct triple.

    Distinct triples are found on one 64-bit in-process hash of (prompt id, model, text) (cheap
    on long texts, and a join on one integer column); the join back is checked field by field,
    and on the rare hash collision the exact (slower) join on the values themselves is used, so
    ids never depend on the transient hash.
    """
    fast = _response_ids_by_hash(frame)
    return fast if fast is not None else _response_ids_exact(frame)


def _triple(s: str) -> list[pl.Expr]:
    return [pl.col("prompt_id"), pl.col(f"model_{s}").alias("model"), pl.col(f"response_{s}").alias("text")]


def _with_response_digests(triples: pl.DataFrame) -> pl.DataFrame:
    sep = ids.SEP
    keys = triples.select(pl.col("prompt_id") + sep + pl.col("model").fill_null("") + sep + pl.col("text").fill_null(""))
    return triples.with_columns(ids.digest_series(keys.to_series(), "r").alias("_rid"))


def _response_ids_by_hash(frame: pl.DataFrame) -> pl.DataFrame | None:
    """The ids through a 64-bit hash of each triple; ``None`` if two triples share a hash."""
    key = lambda s: pl.struct(_triple(s)).hash(seed=1).alias(f"_h{s}")  # noqa: E731
    out = frame.with_columns(key("a"), key("b"))
    triples = pl.concat([out.select(*_triple(s), pl.col(f"_h{s}").alias("_h")) for s in ("a", "b")]).unique(subset="_h", keep="first")
    triples = _with_response_digests(triples)
    for s in ("a", "b"):
        right = triples.select(
            pl.col("_h").alias(f"_h{s}"), pl.col("_rid").alias(f"response_{s}_id"),
            pl.col("prompt_id").alias("_tp"), pl.col("model").alias("_tm"), pl.col("text").alias("_tt"),
        )
        out = out.join(right, on=f"_h{s}", how="left", maintain_order="left")
        same = (
            pl.col("_tp").eq_missing(pl.col("prompt_id"))
            & pl.col("_tm").eq_missing(pl.col(f"model_{s}"))
            & pl.col("_tt").eq_missing(pl.col(f"response_{s}"))
        ).all()
        if not out.select(same).item():
            return None  # a 64-bit collision: the caller redoes it with the exact join
        out = out.drop(f"_h{s}", "_tp", "_tm", "_tt")
    return out


def _response_ids_exact(frame: pl.DataFrame) -> pl.DataFrame:
    triples = pl.concat([frame.select(_triple(s)) for s in ("a", "b")]).unique(subset=["prompt_id", "model", "text"], keep="first")
    triples = _with_response_digests(triples)
    out = frame
    for s in ("a", "b"):
        right = triples.rename({"model": f"model_{s}", "text": f"response_{s}", "_rid": f"response_{s}_id"})
        out = out.join(right, on=["prompt_id", f"model_{s}", f"response_{s}"], how="left", nulls_equal=True, maintain_order="left")
    return out


# ---------------------------------------------------------------------------- transactions
SQLITE_TS = "%Y-%m-%d %H:%M:%S%.6f"  # how SQLAlchemy stores a DateTime in SQLite (UTC)


class ArrowTransaction:
    """One transaction on a connection of its own that moves whole frames in and out.

    Frames go in through a temporary table and one ``INSERT ... SELECT`` per table, so the
    indexes are maintained by the database in one pass. On PostgreSQL with
    ``adbc-driver-postgresql`` installed the transaction runs on an ADBC connection: frames go
    in as Arrow (binary ``COPY``) and results come back as Arrow, with no Python object per
    row. Otherwise (SQLite always) the same calls run on a SQLAlchemy connection of the store
    through its DBAPI driver; SQLite results are read as JSON lines parsed by polars.
    """

    def __init__(self, store: "Store", write: bool, check_references: bool = True):
        self.store, self.write = store, write
        self.dialect = store.dialect
        self._n_tmp = 0
        self._adbc = None
        self._sa_ctx = None
        if _use_adbc(store):
            self._adbc = _adbc_connect(store, write)
            self._cur = self._adbc.cursor()
        else:
            if write and not check_references and self.dialect == "sqlite":
                self._sa_ctx = _sqlite_write_without_fk_checks(store)
            elif write:
                self._sa_ctx = store._write()
            else:
                self._sa_ctx = store._read()
            self._conn = self._sa_ctx.__enter__()
            self._cur = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    # -- lifecycle
    def __enter__(self) -> "ArrowTransaction":
        if self._adbc is not None:
            self._cur.execute("BEGIN")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._adbc is not None:
            try:
                self._cur.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                try:
                    self._cur.close()
                finally:
                    self._adbc.close()
        else:
            try:
                if exc_type is None:
                    self.drop_temp_tables()  # a pooled connection keeps temp tables
            finally:
                self._cur.close()
                self._sa_ctx.__exit__(exc_type, exc, tb)  # type: ignore[union-attr]

    def drop_temp_tables(self, first: int = 1) -> None:
        """Drop this transaction's SQLite temporary tables from number ``first`` on (no-op elsewhere)."""
        if self._adbc is None and self.dialect == "sqlite":
            for i in range(first, self._n_tmp + 1):
                self._cur.execute(f"DROP TABLE IF EXISTS temp._wb_tmp_{i}")

    def commit_and_begin(self) -> None:
        """End the transaction and start a new one (ADBC only; a no-op otherwise)."""
        if self._adbc is not None:
            self._cur.execute("COMMIT")
            self._cur.execute("BEGIN")

    # -- statements
    def ph(self, i: int) -> str:
        """The placeholder of the ``i``-th (0-based) parameter."""
        if self.dialect == "sqlite":
            return "?"
        return f"${i + 1}" if self._adbc is not None else "%s"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(sql, tuple(params)) if params else self._cur.execute(sql)
        if self.dialect == "sqlite":
            self._cur.execute("SELECT changes()")
            return int(self._cur.fetchone()[0])
        return int(self._cur.rowcount or 0)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._cur.execute(sql, tuple(params)) if params else self._cur.execute(sql)
        row = self._cur.fetchone()
        self._cur.fetchall()
        return row[0] if row else None

    def frame(self, sql: str, params: Sequence[Any] = (), schema: dict[str, Any] | None = None) -> pl.DataFrame:
        """A query's rows as a polars frame, cast to ``schema`` (name -> dtype) when given."""
        if self._adbc is not None:
            self._cur.execute(sql, tuple(params)) if params else self._cur.execute(sql)
            out = pl.from_arrow(self._cur.fetch_arrow_table())
            assert isinstance(out, pl.DataFrame)
        elif self.dialect == "sqlite" and schema:
            out = self._sqlite_json_frame(sql, params, schema)
        else:
            self._cur.execute(sql, tuple(params)) if params else self._cur.execute(sql)
            names = [d[0] for d in self._cur.description]
            rows = self._cur.fetchall()
            out = pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None) if rows else pl.DataFrame({n: [] for n in names})
        if schema:
            out = out.select([_cast(out[name], dtype) for name, dtype in schema.items()])
        return out

    def _sqlite_json_frame(self, sql: str, params: Sequence[Any], schema: dict[str, Any]) -> pl.DataFrame:
        """Read through SQLite's JSON functions: one text per row, parsed by polars in bulk.

        Python's ``sqlite3`` makes a Python object of every value; asking SQLite for one JSON
        object per row and parsing the lines with ``pl.read_ndjson`` is several times faster
        on large results (and needs no second SQLite library in the process). The keys are
        short (``c0``, ``c1``, ...) and the parse is given the types SQLite returns (text for
        timestamps, integers for booleans), so polars does not scan the text to infer them.
        """
        names = list(schema)
        keys = [f"c{i}" for i in range(len(names))]
        obj = "json_object(" + ", ".join(f"'{k}', q.{n}" for k, n in zip(keys, names)) + ")"
        self._cur.execute(f"SELECT {obj} FROM ({sql}) q", tuple(params))
        chunks = []
        while True:
            rows = self._cur.fetchmany(200_000)
            if not rows:
                break
            chunks.append("\n".join([r[0] for r in rows]))
        if not chunks:
            return pl.DataFrame({n: [] for n in names})
        text = "\n".join(chunks).encode("utf-8", "surrogatepass")
        del chunks
        raw = {k: _sqlite_json_type(schema[n]) for k, n in zip(keys, names)}
        try:
            out = pl.read_ndjson(io.BytesIO(text), schema=raw)
        except pl.exceptions.PolarsError:  # a value of an unexpected type: let polars infer
            out = pl.read_ndjson(io.BytesIO(text), infer_schema_length=None)
        return out.rename(dict(zip(keys, names)))

    def sqlite_columns(self, query: "ColumnQuery") -> tuple[pl.DataFrame, list[Any]]:
        """Run a :class:`ColumnQuery` on this (SQLite) transaction: its frame and its scalars."""
        return query.parse(query.fetch(self._cur))

    def temp_table(self, frame: pl.DataFrame, converted: bool = False) -> str:
        """Load a frame into a new temporary table (dropped at the end of the connection)."""
        self._n_tmp += 1
        name = f"_wb_tmp_{self._n_tmp}"
        if not converted:
            frame = self._for_db(frame)
        if self._adbc is not None:
            self._cur.adbc_ingest(name, frame.to_arrow(compat_level=pl.CompatLevel.oldest()), mode="create", temporary=True)
            return name
        cols = ", ".join(f"{c} {_sql_type(t, self.dialect)}" for c, t in frame.schema.items())
        on_commit = " ON COMMIT DROP" if self.dialect == "postgresql" else ""
        self._cur.execute(f"CREATE TEMPORARY TABLE {name} ({cols}){on_commit}")
        if self.dialect == "postgresql":
            with self._cur.copy(f"COPY {name} ({', '.join(frame.columns)}) FROM STDIN") as copy:
                for row in frame.iter_rows():
                    copy.write_row(row)
        else:
            marks = ", ".join("?" * frame.width)
            self._cur.executemany(f"INSERT INTO {name} VALUES ({marks})", frame.iter_rows())
        return name

    def insert_ignore(self, table: sa.Table, frame: "pl.DataFrame | SqliteRows") -> int:
        """Insert the frame's rows, skipping those whose key is already there; returns how many were new.

        On SQLite a column that holds one value in every row (an import's ``kind``,
        ``import_id``, ``source``, often ``created_at``) is not copied row by row: it goes into the
        ``INSERT ... SELECT`` as one bound value. A parent table (prompts, responses, annotators)
        skips only rows whose key is already there (``ON CONFLICT DO NOTHING``), so a row that
        breaks a ``NOT NULL`` or ``CHECK`` constraint raises instead of vanishing: after the
        insert, every key of the frame is in the table, which is what lets the import run with
        foreign-key checks off (see :func:`_sqlite_write_without_fk_checks`). ``label_events``
        keeps ``INSERT OR IGNORE``. On SQLite ``frame`` may be :class:`SqliteRows` made
        beforehand (by another thread: :func:`write_pipelined`).
        """
        if isinstance(frame, SqliteRows):
            staged: SqliteRows | None = frame
        elif frame.height == 0:
            return 0
        else:
            staged = SqliteRows.of(frame) if self.dialect == "sqlite" else None
        if staged is not None:
            if not staged.height:
                return 0
            cols = ", ".join(list(staged.schema) + list(staged.consts))
            select = ", ".join([f"column{i + 1}" for i in range(len(staged.schema))] + ["?"] * len(staged.consts))
            one_row = "(" + ", ".join("?" * len(staged.schema)) + ")"
            if table.name == "label_events":
                verb, tail = "INSERT OR IGNORE", ""
            else:
                verb, tail = "INSERT", " ON CONFLICT DO NOTHING"
            added = 0
            for n_rows, params in staged.batches():
                values = ", ".join([one_row] * n_rows)
                self._cur.executemany(f"{verb} INTO {table.name} ({cols}) SELECT {select} FROM (VALUES {values}) WHERE true{tail}", params)
                added += max(self._cur.rowcount, 0)  # executemany sums the rows each statement changed
            return added
        assert isinstance(frame, pl.DataFrame)
        tmp = self.temp_table(frame)
        cols = ", ".join(frame.columns)
        return self.execute(f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {tmp} ON CONFLICT DO NOTHING")

    def _for_db(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Timestamps as SQLite stores them (UTC text); everything else as it is."""
        if self.dialect != "sqlite":
            return frame
        return _sqlite_values(frame)


class SqliteRows:
    """A frame's rows as :meth:`ArrowTransaction.insert_ignore` binds them on SQLite.

    ``consts``: the columns that hold one value in every row (bound once per statement);
    ``schema`` and ``rows``: the other columns, as Python tuples. The rows go to SQLite in
    statements of :data:`VALUES_ROWS` rows each (``INSERT ... SELECT ... FROM (VALUES (...),
    (...), ...)``, one ``executemany``): the database maintains the indexes as it would for one
    ``INSERT ... SELECT`` from a staging table, without writing, reading and dropping that
    table (a third less of the writer's time on a 1M-comparison import). Making the parameter
    tuples is most of the Python work of an insert: :func:`write_pipelined` does it in its
    worker thread (``materialize``).
    """

    def __init__(self, schema: dict[str, Any], consts: dict[str, Any], values: pl.DataFrame):
        self.schema, self.consts, self.values, self.height = schema, consts, values, values.height
        self._batches: list[tuple[int, list[tuple]]] | None = None

    @classmethod
    def of(cls, frame: pl.DataFrame, materialize: bool = False) -> "SqliteRows":
        """``materialize``: the statements' parameters made now (else as they are bound)."""
        db_frame = _sqlite_values(frame)
        consts = _constant_columns(db_frame) if db_frame.height > 1 else {}
        rest = [c for c in db_frame.columns if c not in consts]
        if not rest:  # keep one column in the VALUES rows
            rest = [db_frame.columns[0]]
            consts.pop(rest[0])
        values = db_frame.select(rest)
        out = cls(dict(values.schema), consts, values)
        if materialize:
            out._batches = [(n, list(params)) for n, params in out.batches()]
        return out

    def batches(self) -> Iterator[tuple[int, Iterable[tuple]]]:
        """``(rows per statement, parameter tuples)`` for each ``executemany``: the full
        statements, then one for the rows left over. The parameters are the constant columns'
        values, then the rows' values row after row, made column by column (a Python list per
        column, interleaved by slice assignment: no tuple per row)."""
        if self._batches is not None:
            yield from self._batches
            return
        k = len(self.schema)
        per = max(1, min(VALUES_ROWS, MAX_SQLITE_PARAMS // max(1, k)))
        consts = tuple(self.consts.values())
        n_full = self.height // per

        def flat(part: pl.DataFrame) -> list[Any]:
            out: list[Any] = [None] * (part.height * k)
            for j, col in enumerate(part.get_columns()):
                out[j::k] = col.to_list()
            return out

        def full() -> Iterator[tuple]:
            slab = per * 256  # rows turned into Python values at a time
            for start in range(0, n_full * per, slab):
                values = flat(self.values.slice(start, min(slab, n_full * per - start)))
                step = per * k
                for i in range(0, len(values), step):
                    yield consts + tuple(values[i:i + step])

        if n_full:
            yield per, full()
        if self.height - n_full * per:
            yield self.height - n_full * per, [consts + tuple(flat(self.values.slice(n_full * per)))]


VALUES_ROWS = 256  # rows per INSERT ... VALUES statement of SqliteRows
MAX_SQLITE_PARAMS = 32_000  # SQLite's limit on the parameters of one statement is 32,766 (since 3.32)


def _sqlite_values(frame: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as SQLite stores them (UTC text), booleans as 0/1; everything else as it is."""
    return frame.with_columns(
            [pl.col(c).dt.convert_time_zone("UTC").dt.strftime(SQLITE_TS) if t.time_zone else pl.col(c).dt.strftime(SQLITE_TS)  # type: ignore[union-attr]
             for c, t in frame.schema.items() if isinstance(t, pl.Datetime)]
            + [pl.col(c).cast(pl.Int8) for c, t in frame.schema.items() if t == pl.Boolean]
        )


def _constant_columns(frame: pl.DataFrame) -> dict[str, Any]:
    """The columns that hold one value (or only nulls) in every row, with that value."""
    out: dict[str, Any] = {}
    for col in frame.get_columns():
        nulls = col.null_count()
        if nulls == len(col):
            out[col.name] = None
        elif nulls == 0 and col.dtype in (pl.String, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.Float64):
            first = col[0]
            if (col == first).all():
                out[col.name] = first
    return out


BULK_CACHE_KIB = 1024 * 1024  # SQLite page cache limit of a bulk write's connection while it runs (filled only as
# needed): the pages a large import touches stay cached instead of spilling to the WAL before the commit and being
# read back (the indexes of a chunked import are updated all over; 256 MiB made 1M imports ~25% slower)


BACKGROUND_CHECKPOINT_CHANGES = 200_000  # rows a bulk write changes from which its WAL checkpoint runs in a thread


@contextlib.contextmanager
def _sqlite_write_without_fk_checks(store: "Store") -> Iterator[sa.Connection]:
    """A SQLite write transaction (``BEGIN IMMEDIATE``) with foreign-key checks off.

    For the bulk writes only, where every reference is there by construction: the prompts,
    responses and annotators that the label events name are derived from the same frame and
    inserted first, in the same transaction, with ``ON CONFLICT DO NOTHING`` (so each key is in
    its table afterwards, new or not). Checking the foreign keys again costs four index look-ups
    per label, about a third of the import. ``PRAGMA foreign_keys`` only takes effect outside a
    transaction, so it is switched off before ``BEGIN`` and back on after the end; a connection
    on which that fails is discarded, never returned to the pool.

    The commit does not run SQLite's automatic WAL checkpoint (copying the committed pages into
    the database file, with two fsyncs): after a large write it runs in a thread of its
    own (:func:`_checkpoint_in_background`), after a small one here, as before. The import is
    committed either way (in WAL mode with ``synchronous = NORMAL`` a commit is never synced;
    the checkpoint is), and readers see it at once.
    """
    conn = store.engine.connect().execution_options(wb_write=True)
    raw = conn.connection.driver_connection
    cache_size = -2000  # SQLite's default, in case reading the setting fails
    autocheckpoint = 1000
    changed = -1  # rows the transaction changed, once it has committed
    try:
        cache_size = raw.execute("PRAGMA cache_size").fetchone()[0]
        autocheckpoint = raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        raw.execute("PRAGMA foreign_keys = OFF")
        raw.execute("PRAGMA temp_store = MEMORY")  # the staging tables: no temp file to write and drop
        raw.execute(f"PRAGMA cache_size = {-BULK_CACHE_KIB}")  # index pages stay cached during the import
        raw.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpoint runs after the commit, below
        before = raw.total_changes
        with conn.begin():
            yield conn
        changed = raw.total_changes - before
    finally:
        try:
            raw.execute(f"PRAGMA cache_size = {int(cache_size)}")
            raw.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
            raw.execute("PRAGMA temp_store = DEFAULT")
            raw.execute("PRAGMA foreign_keys = ON")
            ok = raw.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        except Exception:  # noqa: BLE001
            ok = False
        try:
            if ok and changed >= 0:
                if changed < BACKGROUND_CHECKPOINT_CHANGES or not _checkpoint_in_background(store):
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)")  # what the automatic checkpoint would have done
        except Exception:  # noqa: BLE001  (a checkpoint that cannot run now runs at a later commit)
            pass
        if not ok:
            conn.invalidate()
        conn.close()


def _checkpoint_in_background(store: "Store") -> bool:
    """Start a WAL checkpoint (``PASSIVE``: it waits for no reader or writer) on a connection of
    its own in a thread; ``False`` if the store is not a database file.

    The thread is not a daemon: a process that ends waits for it, so the WAL a large import left
    does not fall to the next writer's commit. :meth:`workbench.store.Store.wait_for_checkpoint`
    and :meth:`~workbench.store.Store.close` wait for it as well.
    """
    import sqlite3
    import threading

    db = store.engine.url.database
    if not db or db == ":memory:" or "mode=memory" in db:
        return False

    def checkpoint() -> None:
        try:
            con = sqlite3.connect(db, timeout=60, isolation_level=None)
            try:
                con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                con.close()
        except Exception:  # noqa: BLE001  (a checkpoint that cannot run now runs at a later commit)
            pass

    thread = threading.Thread(target=checkpoint, name="workbench-wal-checkpoint")
    thread.start()
    store._checkpoints.append(thread)
    return True


def _sqlite_json_type(dtype: Any) -> Any:
    """The type SQLite's ``json_object`` gives a column stored for ``dtype``."""
    if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt32, pl.Boolean):
        return pl.Int64
    if dtype in (pl.Float32, pl.Float64):
        return pl.Float64
    return pl.String


def _cast(col: pl.Series, dtype: Any) -> pl.Series:
    if isinstance(dtype, pl.Datetime):
        return parse_timestamps(col).alias(col.name)
    if dtype == pl.Boolean and col.dtype != pl.Boolean:
        return (col.cast(pl.Int64) != 0).alias(col.name)
    return col.cast(dtype)


def parse_timestamps(col: pl.Series) -> pl.Series:
    """Timestamps as UTC microseconds, from SQLite's text or a database's native type."""
    if col.dtype == pl.String:
        return col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us").dt.replace_time_zone("UTC")
    if isinstance(col.dtype, pl.Datetime):
        if col.dtype.time_zone is None:
            return col.dt.cast_time_unit("us").dt.replace_time_zone("UTC")
        return col.dt.cast_time_unit("us").dt.convert_time_zone("UTC")
    if col.dtype == pl.Null or col.null_count() == len(col):
        return pl.Series(col.name, [None] * len(col), dtype=pl.Datetime("us", "UTC"))
    raise TypeError(f"cannot read {col.name} ({col.dtype}) as timestamps")


def _sql_type(dtype: Any, dialect: str) -> str:
    if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt32):
        return "BIGINT"
    if dtype in (pl.Float32, pl.Float64):
        return "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    if dtype == pl.Boolean:
        return "BOOLEAN"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ" if dialect == "postgresql" else "TEXT"
    return "TEXT"


def _use_adbc(store: "Store") -> bool:
    if os.environ.get("WORKBENCH_NO_ADBC"):
        return False
    if store.dialect == "sqlite":
        # Never ADBC on SQLite: its driver carries its own SQLite library, and two SQLite
        # libraries in one process release each other's POSIX locks (a known way to corrupt a
        # database, https://sqlite.org/howtocorrupt.html#multiple_copies_of_sqlite_linked_into_the_same_application).
        return False
    if store.dialect == "postgresql":
        module = "adbc_driver_postgresql"
    else:
        return False
    try:
        __import__(module + ".dbapi")
    except ImportError:
        return False
    return True


def _adbc_connect(store: "Store", write: bool) -> Any:
    import adbc_driver_postgresql.dbapi as adbc_pg

    url = store.engine.url.set(drivername="postgresql")
    return adbc_pg.connect(url.render_as_string(hide_password=False), autocommit=True)


def transaction(store: "Store", write: bool = True, check_references: bool = True) -> ArrowTransaction:
    """``with transaction(store) as tx:`` one write (or read) transaction for whole frames.

    ``check_references=False`` (bulk writes whose references hold by construction) runs a
    SQLite write with foreign-key checks off; see :func:`_sqlite_write_without_fk_checks`.
    """
    return ArrowTransaction(store, write, check_references)


# ---------------------------------------------------------------------------- writes
def import_tables(frame: pl.DataFrame, import_id: str, now: Any = None) -> dict[str, pl.DataFrame]:
    """The prompt, response, annotator and event rows of a prepared frame.

    ``now`` (default: the current time) is the ``created_at`` of rows that have none, and of
    the annotators: one value for all the chunks of a pipelined import.
    """
    from .store import utcnow

    now = utcnow() if now is None else now
    frame = frame.with_columns(pl.col("created_at").fill_null(now))
    prompts = (
        frame.select("prompt_id", "prompt", "prompt_messages", "category", "created_at")
        .unique(subset="prompt_id", keep="first")  # sorted below
        .select(
            "prompt_id",
            pl.when(pl.col("prompt_messages").is_null()).then(pl.lit("text")).otherwise(pl.lit("messages")).alias("kind"),
            pl.col("prompt").alias("text"),
            pl.col("prompt_messages").alias("messages"),
            "category",
            pl.lit(None, dtype=pl.String).alias("metadata"),
            "created_at",
        )
    )
    responses = pl.concat([
        frame.select(pl.col(f"response_{s}_id").alias("response_id"), "prompt_id", pl.col(f"response_{s}").alias("text"), pl.col(f"model_{s}").alias("model"), "created_at")
        for s in ("a", "b")
    ]).unique(subset="response_id", keep="first").with_columns(pl.lit(None, dtype=pl.String).alias("metadata"))  # sorted below
    # Rows go in key order: the B-tree indexes then grow at their ends instead of at random
    # places (twice as fast on SQLite). Event ids within one import follow comparison ids.
    responses = responses.sort("response_id")
    annotators = frame.select("annotator_id").unique(maintain_order=True).with_columns(
        pl.col("annotator_id").alias("name"), pl.lit("annotator").alias("role"), pl.lit(True).alias("active"),
        pl.lit(now).alias("created_at")
    )
    events = frame.select(
        "comparison_id", pl.lit("label").alias("kind"), "prompt_id", "response_a_id", "response_b_id", "label", "strength",
        "annotator_id", "shown_left", "source", "gold", "rationale", "duration_ms", "created_at", "client_token",
        pl.lit(import_id).alias("import_id"),
    ).sort("comparison_id")
    return {"prompts": prompts.sort("prompt_id"), "responses": responses, "annotators": annotators, "label_events": events}


def write_prepared(store: "Store", tx: ArrowTransaction, frame: pl.DataFrame, import_id: str) -> dict[str, int]:
    """Insert the rows of a prepared frame in ``tx``; returns how many of each were new.

    A client token given in the input that the store already holds for a different label is
    refused (:class:`workbench.store.StoreError`), as :meth:`Store.add_label` refuses it.
    """
    return write_tables(tx, frame, import_tables(frame, import_id), import_id)


def write_tables(tx: ArrowTransaction, frame: pl.DataFrame, tables: "dict[str, pl.DataFrame | SqliteRows]", import_id: str) -> dict[str, int]:
    """Insert :func:`import_tables` of a prepared ``frame`` in ``tx``; how many of each were new."""
    counts = {
        "prompts": tx.insert_ignore(schema.prompts, tables["prompts"]),
        "responses": tx.insert_ignore(schema.responses, tables["responses"]),
        "annotators": tx.insert_ignore(schema.annotators, tables["annotators"]),
        "labels": tx.insert_ignore(schema.label_events, tables["label_events"]),
    }
    if "_given_token" in frame.columns and counts["labels"] < frame.height and frame["_given_token"].any():
        _refuse_reused_tokens(tx, frame.filter(pl.col("_given_token")), import_id)
    return counts


# ---------------------------------------------------------------------------- pipelined import
PIPELINE_CHUNK_ROWS = 125_000  # rows per chunk of a pipelined import (SQLite); see plan_chunks


def plan_chunks(store: "Store", frame: pl.DataFrame, chunk_rows: int | None = None) -> int:
    """How many chunks :func:`write_pipelined` splits an import into; 1 means one piece.

    Only SQLite imports are pipelined (PostgreSQL takes the frame in one ``COPY``), and only
    when the frame spans two chunks or more. A given client token that looks like an import's
    own (``imp:...``) could clash with a token derived for a row in another chunk, which only
    the one-piece path detects: such a frame is written in one piece.
    """
    rows = PIPELINE_CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if store.dialect != "sqlite" or frame.height < 2 * rows:
        return 1
    tokens = frame.get_column("client_token")
    if tokens.null_count() < frame.height and tokens.str.starts_with("imp:").any():
        return 1
    return -(-frame.height // rows)


def prepare_for_chunks(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The whole-input part of :func:`prepare_comparisons`: canonical prompts and every reject.

    Returns the frame (without ids; :func:`write_pipelined` adds them chunk by chunk) and the
    same rejects :func:`prepare_comparisons` finds, given :func:`plan_chunks`'s condition (no
    given token starts with ``imp:``, so only given tokens can repeat).
    """
    frame, rejects = canonical_prompts(frame)
    return frame, _with_repeated_tokens(frame, rejects)


def split_by_prompt(frame: pl.DataFrame, n_chunks: int) -> list[pl.DataFrame]:
    """``frame`` in ``n_chunks`` parts, every row of one prompt in the same part, in input order.

    Two rows that make the same label (same prompt, responses, annotator, ...) are then in the
    same part in their input order, so each part numbers their occurrences as the whole frame
    does, and the parts get exactly the ids and tokens of the one-piece import.
    """
    part = (pl.struct("prompt", "prompt_messages").hash(seed=7) % n_chunks).alias("_part")
    parts = frame.with_columns(part).partition_by("_part", maintain_order=True, include_key=False)
    return [p for p in parts if p.height]


_DONE = object()


def write_pipelined(store: "Store", tx: ArrowTransaction, frame: pl.DataFrame, rejected_lines: pl.Series,
                    import_id: str, n_chunks: int) -> dict[str, int]:
    """Write a :func:`prepare_for_chunks` frame in ``tx`` chunk by chunk, preparing the next chunk meanwhile.

    A worker thread adds the ids (:func:`attach_ids`), drops ``rejected_lines`` and builds the
    rows of chunk k+1 (polars and ``hashlib``, which run without the GIL for the most part)
    while this thread inserts chunk k (SQLite runs each statement without the GIL). It is still
    one transaction: an error in either thread stops both and propagates, and the caller's
    transaction rolls back. Returns the new-row counts summed over the chunks: each chunk's
    inserts see the rows of the chunks before it, so the sums are the one-piece counts.
    """
    import queue
    import threading

    from .store import utcnow

    now = utcnow()
    parts = split_by_prompt(frame, n_chunks)
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def prepare() -> None:
        try:
            for k, part in enumerate(parts):
                if stop.is_set():
                    return
                prepared = attach_ids(part)
                if rejected_lines.len():
                    prepared = prepared.filter(~pl.col("line").is_in(rejected_lines.implode()))
                # Chunk k's rows are recorded a microsecond after chunk k-1's: each chunk's events
                # go in comparison-id order, so the events then lie in a version's file order
                # (created_at, comparison_id) and a snapshot need not sort them.
                at = now + datetime.timedelta(microseconds=k)
                tables = {name: SqliteRows.of(t, materialize=True) for name, t in import_tables(prepared, import_id, at).items()}
                if not put((prepared, tables)):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001  (handed to the writing thread, which raises it)
            put(exc)

    worker = threading.Thread(target=prepare, name="workbench-import-prepare", daemon=True)
    counts = {"prompts": 0, "responses": 0, "annotators": 0, "labels": 0}
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            prepared, tables = item
            for key, value in write_chunk(tx, prepared, tables, import_id).items():
                counts[key] += value
    finally:
        stop.set()
        while worker.is_alive():
            try:
                handoff.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
    return counts


def write_chunk(tx: ArrowTransaction, frame: pl.DataFrame, tables: "dict[str, SqliteRows]", import_id: str) -> dict[str, int]:
    """One chunk of :func:`write_pipelined` (a separate name so tests can stop an import between chunks)."""
    first_tmp = tx._n_tmp + 1
    counts = write_tables(tx, frame, tables, import_id)
    tx.drop_temp_tables(first_tmp)  # the chunk's staging rows, so memory holds one chunk's
    return counts


def _refuse_reused_tokens(tx: ArrowTransaction, given: pl.DataFrame, import_id: str) -> None:
    from .store import StoreError

    cols = ["client_token", "prompt_id", "response_a_id", "response_b_id", "label", "annotator_id"]
    tmp = tx.temp_table(given.select(cols))
    clash = tx.frame(
        f"""SELECT t.client_token, e.event_id FROM {'temp.' if tx.dialect == 'sqlite' else ''}{tmp} t
            JOIN label_events e ON e.client_token = t.client_token
            WHERE (e.import_id IS NULL OR e.import_id <> {tx.ph(0)})
              AND (e.prompt_id <> t.prompt_id OR e.response_a_id <> t.response_a_id
                   OR e.response_b_id <> t.response_b_id OR e.label IS NULL OR e.label <> t.label
                   OR e.annotator_id <> t.annotator_id)
            LIMIT 1""",
        (import_id,),
    )
    if clash.height:
        token, event_id = clash.row(0)
        raise StoreError(
            f"client token {token!r} was already used for a different label (event {event_id}); "
            "a token names one submission; nothing was written"
        )


def write_candidates(store: "Store", tx: ArrowTransaction, frame: pl.DataFrame) -> dict[str, int]:
    """Insert prompts and responses (no labels); returns how many were new."""
    from .frames import MAX_TEXT_CHARS
    from .store import utcnow

    n = frame.height
    cols = {c: frame[c] for c in ("prompt", "prompt_messages", "category", "response", "model", "metadata") if c in frame.columns}
    for required in ("response",):
        if required not in cols:
            raise ValueError(f"candidates need a {required!r} column")
    if "prompt" not in cols and "prompt_messages" not in cols:
        raise ValueError("candidates need a 'prompt' or 'prompt_messages' column")
    as_input = {
        "prompt": cols.get("prompt"), "prompt_messages": cols.get("prompt_messages"), "category": cols.get("category"),
        "response_a": cols["response"], "model_a": cols.get("model"),
    }
    from .frames import to_input_frame

    f = to_input_frame(as_input, n=n)
    bad = f.filter(
        pl.col("response_a").is_null() | (pl.col("response_a").str.strip_chars() == "")
        | (pl.col("prompt").is_null() & pl.col("prompt_messages").is_null())
        | (pl.col("response_a").str.len_chars() > MAX_TEXT_CHARS)
    )
    if bad.height:
        raise ValueError(f"candidate row {bad['line'][0]}: empty prompt or response, or a text too long; nothing was written")
    f = f.with_columns(pl.col("response_a").alias("response_b"), pl.col("model_a").alias("model_b"))
    prepared, rejects = prepare_comparisons(f)
    if rejects.height:
        r = rejects.row(0, named=True)
        raise ValueError(f"candidate row {r['line']}: {r['field']}: {r['reason']}; nothing was written")
    now = utcnow()
    prepared = prepared.with_columns(pl.col("created_at").fill_null(now))
    prompts = prepared.select(
        "prompt_id",
        pl.when(pl.col("prompt_messages").is_null()).then(pl.lit("text")).otherwise(pl.lit("messages")).alias("kind"),
        pl.col("prompt").alias("text"), pl.col("prompt_messages").alias("messages"), "category",
        pl.lit(None, dtype=pl.String).alias("metadata"), "created_at",
    ).unique(subset="prompt_id", keep="first", maintain_order=True)
    meta = frame["metadata"].cast(pl.String) if "metadata" in frame.columns else pl.Series("metadata", [None] * n, dtype=pl.String)
    responses = prepared.select(
        pl.col("response_a_id").alias("response_id"), "prompt_id", pl.col("response_a").alias("text"),
        pl.col("model_a").alias("model"), "created_at",
    ).with_columns(meta.alias("metadata")).unique(subset="response_id", keep="first", maintain_order=True)
    return {
        "prompts": tx.insert_ignore(schema.prompts, prompts),
        "responses": tx.insert_ignore(schema.responses, responses),
    }
