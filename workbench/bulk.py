"""Bulk writes: an input frame becomes prompt, response, annotator and label-event rows.

The work is vectorized where it can be (polars), hashing runs once per unique prompt, response
and label, and the rows go to the database in one transaction through the fastest path each
backend offers (``executemany`` on SQLite, ``COPY`` on PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import polars as pl
import sqlalchemy as sa

from . import ids, schema

if TYPE_CHECKING:
    from .store import Store

REJECTS_SCHEMA = {"line": pl.Int64, "field": pl.String, "reason": pl.String}


def _hash_list(values: list[str], prefix: str) -> list[str]:
    sha = hashlib.sha256
    n = ids._ID_HEX
    return [prefix + sha(v.encode("utf-8", "surrogatepass")).hexdigest()[:n] for v in values]


def prepare_comparisons(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Add ids and tokens to an input frame; return it and the rows whose prompt is malformed."""
    rejects: list[dict[str, Any]] = []
    # Conversations: parse and validate once per distinct JSON text.
    msg_json = frame.get_column("prompt_messages").drop_nulls().unique().to_list()
    canon: dict[str, tuple[str | None, str | None]] = {}
    for raw in msg_json:
        try:
            messages = ids.canonical_messages(json.loads(raw))
            canon[raw] = (json.dumps(messages, ensure_ascii=False, separators=(",", ":")), ids.render_messages(messages))
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
            pl.col("_msgs").alias("prompt_messages"),
        ).drop("_msgs", "_msg_err", "_rendered")
    frame = frame.with_columns(
        pl.when(pl.col("prompt_messages").is_not_null())
        .then(pl.lit("messages\x1e") + pl.col("prompt_messages"))
        .otherwise(pl.lit("text\x1e") + pl.col("prompt").fill_null(""))
        .alias("_pkey")
    )
    keys = frame.get_column("_pkey").unique().to_list()
    pid = pl.DataFrame({"_pkey": keys, "prompt_id": _hash_list(keys, "p")}, schema={"_pkey": pl.String, "prompt_id": pl.String})
    frame = frame.join(pid, on="_pkey", how="left", maintain_order="left").drop("_pkey")

    # Responses: id = hash(prompt id, model, text), once per distinct triple.
    sep = "\x1f"
    for side in ("a", "b"):
        frame = frame.with_columns(
            (pl.col("prompt_id") + sep + pl.col(f"model_{side}").fill_null("") + sep + pl.col(f"response_{side}").fill_null("") + sep).alias(f"_rkey_{side}")
        )
    rkeys = pl.concat([frame.get_column("_rkey_a"), frame.get_column("_rkey_b")]).unique().to_list()
    rid = pl.DataFrame({"_rkey": rkeys, "_rid": _hash_list(rkeys, "r")}, schema={"_rkey": pl.String, "_rid": pl.String})
    for side in ("a", "b"):
        frame = frame.join(rid.rename({"_rkey": f"_rkey_{side}", "_rid": f"response_{side}_id"}), on=f"_rkey_{side}", how="left", maintain_order="left")
    frame = frame.drop("_rkey_a", "_rkey_b")

    # Labels: a deterministic token from what the label says and its occurrence number, so a
    # re-import adds nothing while two identical votes in one file stay two votes.
    parts = ["annotator_id", "response_a_id", "response_b_id", "label", "strength", "shown_left", "gold"]
    frame = frame.with_columns(pl.int_range(pl.len()).over(parts).alias("_occ"))
    key = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in parts] + [pl.col("_occ").cast(pl.String)], separator=sep)
    frame = frame.with_columns(key.alias("_tkey"))
    digests = _hash_list(frame.get_column("_tkey").to_list(), "")
    frame = frame.with_columns(pl.Series("_digest", digests, dtype=pl.String)).drop("_tkey", "_occ")
    given = frame.get_column("client_token")
    if given.null_count() < frame.height:
        given_ids = [None if t is None else ids.comparison_id_of(t) for t in given.to_list()]
        frame = frame.with_columns(pl.Series("_given_cid", given_ids, dtype=pl.String))
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("_given_cid"))
    frame = frame.with_columns(
        pl.coalesce(pl.col("client_token"), pl.lit("imp:") + pl.col("_digest")).alias("client_token"),
        pl.coalesce(pl.col("_given_cid"), pl.lit("c") + pl.col("_digest")).alias("comparison_id"),
    ).drop("_digest", "_given_cid")
    dup = frame.filter(pl.col("client_token").is_duplicated())
    for line in dup.get_column("line").to_list()[1:]:
        rejects.append({"line": line, "field": "client_token", "reason": "client token repeated within the input"})
    return frame, pl.DataFrame(rejects, schema=REJECTS_SCHEMA)


def _ts_strings(col: pl.Expr) -> pl.Expr:
    return col.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S%.6f")


def write_prepared(store: "Store", conn: sa.Connection, frame: pl.DataFrame, import_id: str) -> dict[str, int]:
    """Insert the rows of a prepared frame; returns how many of each were new."""
    from .store import utcnow

    now = utcnow()
    frame = frame.with_columns(pl.col("created_at").fill_null(now))
    prompts = (
        frame.select("prompt_id", "prompt", "prompt_messages", "category", "created_at")
        .unique(subset="prompt_id", keep="first", maintain_order=True)
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
    ]).unique(subset="response_id", keep="first", maintain_order=True).with_columns(pl.lit(None, dtype=pl.String).alias("metadata"))
    annotators = frame.select("annotator_id").unique(maintain_order=True).with_columns(
        pl.col("annotator_id").alias("name"), pl.lit("annotator").alias("role"), pl.lit(True).alias("active"), pl.lit(now).alias("created_at")
    )
    events = frame.select(
        "comparison_id", pl.lit("label").alias("kind"), "prompt_id", "response_a_id", "response_b_id", "label", "strength",
        "annotator_id", "shown_left", "source", "gold", "rationale", "duration_ms", "created_at", "client_token",
        pl.lit(import_id).alias("import_id"),
    )
    return {
        "prompts": _insert_ignore_frame(store, conn, schema.prompts, prompts),
        "responses": _insert_ignore_frame(store, conn, schema.responses, responses),
        "annotators": _insert_ignore_frame(store, conn, schema.annotators, annotators),
        "labels": _insert_ignore_frame(store, conn, schema.label_events, events),
    }


def _insert_ignore_frame(store: "Store", conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> int:
    if frame.height == 0:
        return 0
    cols = frame.columns
    if store.dialect == "sqlite":
        frame = frame.with_columns(
            [_ts_strings(pl.col(c)) for c, t in frame.schema.items() if isinstance(t, pl.Datetime)]
        )
        sql = f"INSERT OR IGNORE INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        before = conn.connection.driver_connection.total_changes  # type: ignore[union-attr]
        cur.executemany(sql, frame.iter_rows())
        return conn.connection.driver_connection.total_changes - before  # type: ignore[union-attr]
    if store.dialect == "postgresql":
        raw = conn.connection.driver_connection  # psycopg.Connection
        tmp = f"_wb_tmp_{table.name}"
        with raw.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DROP")
            cur.execute(f"ALTER TABLE {tmp} ADD COLUMN IF NOT EXISTS _ord bigint")
            cur.execute(f"TRUNCATE {tmp}")
            with cur.copy(f"COPY {tmp} ({', '.join(cols)}, _ord) FROM STDIN") as copy:
                for i, row in enumerate(frame.iter_rows()):
                    copy.write_row((*row, i))
            cur.execute(
                f"INSERT INTO {table.name} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {tmp} ORDER BY _ord ON CONFLICT DO NOTHING"
            )
            return cur.rowcount
    # Any other backend: the portable path.
    stmt = store._insert_ignore(table)
    total = 0
    for row in frame.iter_rows(named=True):
        total += conn.execute(stmt.values(**row)).rowcount
    return total


def write_candidates(store: "Store", conn: sa.Connection, frame: pl.DataFrame) -> dict[str, int]:
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
        "prompts": _insert_ignore_frame(store, conn, schema.prompts, prompts),
        "responses": _insert_ignore_frame(store, conn, schema.responses, responses),
    }
