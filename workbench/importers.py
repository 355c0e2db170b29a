"""Importers: files of preference data become input frames for :meth:`Store.add_comparisons`.

Every reader returns ``(frame, rejects)``: ``frame`` in :data:`workbench.frames.INPUT_SCHEMA`
(one row a label, ``line`` naming where it came from) and ``rejects`` with ``line, field,
reason`` for rows that cannot be read. :func:`import_into` writes a file in one transaction: a
bad row stops it with an error naming the file, the line and the field, and nothing is written,
unless ``skip_invalid`` is set, when the valid rows go in and the rejects go to a file.

Containers: JSONL (optionally gzipped), a JSON array, CSV, Parquet, and ``datasets`` folders
written by ``save_to_disk``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import polars as pl

from .frames import INPUT_SCHEMA, InvalidRows, to_input_frame

if TYPE_CHECKING:
    from .store import ImportReport, Store

REJECTS_SCHEMA = {"line": pl.Int64, "field": pl.String, "reason": pl.String}
MAX_LINE_BYTES = 16 * 1024 * 1024


class ImportFormatError(ValueError):
    """A file that cannot be read as the format asked for (not a row-level problem)."""


class RowError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


# ---------------------------------------------------------------------------- containers
def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict | RowError]]:
    """Yield ``(line, record)`` from a JSONL/JSON/CSV/Parquet file or a ``datasets`` folder.

    A record that cannot be decoded is yielded as a :class:`RowError` so the caller can reject
    that line alone.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        yield from _records_datasets(p)
        return
    name = p.name.lower()
    if name.endswith(".parquet"):
        try:
            table = pl.read_parquet(p)
        except Exception as exc:  # polars raises several error types for a corrupt file
            raise ImportFormatError(f"{p}: not a readable Parquet file ({exc})") from exc
        for i, rec in enumerate(table.iter_rows(named=True), start=1):
            yield i, rec
        return
    opener: Callable[..., Any] = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    try:
        with opener(p, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ImportFormatError(f"{p}: cannot read ({exc})") from exc
    if base.endswith(".csv") or base.endswith(".tsv"):
        yield from _records_csv(raw, "\t" if base.endswith(".tsv") else ",")
    elif base.endswith(".json") and raw.lstrip()[:1] == b"[":
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ImportFormatError(f"{p}: not UTF-8 text ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"{p}: line {exc.lineno}: bad JSON ({exc.msg})") from exc
        for i, rec in enumerate(data, start=1):
            yield i, rec if isinstance(rec, dict) else RowError("record", "not a JSON object")
    else:
        yield from _records_jsonl(raw)


def _records_jsonl(raw: bytes) -> Iterator[tuple[int, dict | RowError]]:
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            yield i, RowError("record", f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield i, RowError("record", "not UTF-8 text")
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield i, RowError("record", f"bad JSON ({exc.msg} at column {exc.colno})")
            continue
        yield i, rec if isinstance(rec, dict) else RowError("record", "not a JSON object")


def _records_csv(raw: bytes, delimiter: str) -> Iterator[tuple[int, dict | RowError]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Name the line that is not UTF-8.
        line = raw[: exc.start].count(b"\n") + 1
        raise ImportFormatError(f"line {line}: not UTF-8 text") from exc
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            yield line, RowError("record", f"{len(row)} fields, the header has {len(header)}")
            continue
        yield line, dict(zip(header, row))


def _records_datasets(p: Path) -> Iterator[tuple[int, dict | RowError]]:
    try:
        import datasets

        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise ImportFormatError(f"{p}: not a datasets folder written by save_to_disk ({exc})") from exc
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict: take every split
        splits = list(ds.keys())
        line = 0
        for split in splits:
            for rec in ds[split]:
                line += 1
                yield line, rec
        return
    for i, rec in enumerate(ds, start=1):
        yield i, rec


# ---------------------------------------------------------------------------- field helpers
def _text(rec: dict, key: str, *, required: bool = True) -> str | None:
    v = rec.get(key)
    if v is None or (isinstance(v, float) and v != v):
        if required:
            raise RowError(key, "missing field")
        return None
    if not isinstance(v, str):
        raise RowError(key, f"expected text, got {type(v).__name__}")
    if required and not v.strip():
        raise RowError(key, "empty text")
    return v


def _messages(v: Any, key: str) -> list[dict]:
    from .ids import canonical_messages

    if not isinstance(v, list):
        raise RowError(key, f"expected a list of messages, got {type(v).__name__}")
    try:
        return canonical_messages(v)
    except ValueError as exc:
        raise RowError(key, str(exc)) from exc


def _frame_from_rows(rows: list[dict], rejects: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    cols: dict[str, list] = {c: [r.get(c) for r in rows] for c in INPUT_SCHEMA}
    frame = to_input_frame(cols, n=len(rows))
    return frame, pl.DataFrame(rejects, schema=REJECTS_SCHEMA)


def _collect(path: str | os.PathLike, parse: Callable[[dict], list[dict]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run ``parse`` on every record; a record may give several rows, or raise :class:`RowError`."""
    rows: list[dict] = []
    rejects: list[dict] = []
    for line, rec in read_records(path):
        if isinstance(rec, RowError):
            rejects.append({"line": line, "field": rec.field, "reason": rec.reason})
            continue
        try:
            for row in parse(rec):
                row["line"] = line
                rows.append(row)
        except RowError as exc:
            rejects.append({"line": line, "field": exc.field, "reason": exc.reason})
    return _frame_from_rows(rows, rejects)


# ---------------------------------------------------------------------------- HH-RLHF
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` as a list of user/assistant messages."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' turn")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if not messages:
        raise ValueError("no 'Human:' / 'Assistant:' turns")
    return messages


def _hh_rest(turns: list[dict]) -> str:
    """The turns after the prompt as one response text (the usual case is one assistant turn)."""
    names = {"user": "Human", "assistant": "Assistant"}
    return turns[0]["content"] + "".join(f"\n\n{names[t['role']]}: {t['content']}" for t in turns[1:])


def _parse_hh(rec: dict) -> list[dict]:
    chosen, rejected = _text(rec, "chosen"), _text(rec, "rejected")
    try:
        c, r = parse_hh_transcript(chosen), parse_hh_transcript(rejected)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RowError("chosen", str(exc)) from exc
    if c[:-1] == r[:-1]:
        k = len(c) - 1
    else:  # a few transcripts diverge earlier: the prompt is the shared part up to a user turn
        k = 0
        while k < min(len(c), len(r)) and c[k] == r[k]:
            k += 1
    while k > 0 and c[k - 1]["role"] != "user":
        k -= 1
    if k == 0:
        raise RowError("chosen", "no shared prompt ending with a Human turn")
    if k >= len(c) or k >= len(r) or c[k]["role"] != "assistant" or r[k]["role"] != "assistant":
        raise RowError("rejected", "chosen and rejected must each continue the prompt with an Assistant turn")
    response_a, response_b = _hh_rest(c[k:]), _hh_rest(r[k:])
    return [{
        "prompt_messages": json.dumps(c[:k], ensure_ascii=False, separators=(",", ":")),
        "response_a": response_a, "response_b": response_b, "label": "a",
    }]


def read_hh_rlhf(path: str | os.PathLike) -> tuple[pl.DataFrame, pl.DataFrame]:
    """HH-RLHF transcripts: ``chosen``/``rejected`` share a prefix; the last turns are compared."""
    return _collect(path, _parse_hh)


# ---------------------------------------------------------------------------- TRL
def _parse_trl(rec: dict) -> list[dict]:
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if chosen is None:
        raise RowError("chosen", "missing field")
    if rejected is None:
        raise RowError("rejected", "missing field")
    prompt = rec.get("prompt")
    row: dict[str, Any] = {"label": "a"}
    if isinstance(chosen, list) or isinstance(rejected, list):  # conversational
        c, r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if prompt is None:  # implicit prompt: the shared prefix
            k = 0
            while k < min(len(c), len(r)) - 1 and c[k] == r[k]:
                k += 1
            p, c, r = c[:k], c[k:], r[k:]
            if not p:
                raise RowError("prompt", "implicit prompt: chosen and rejected share no leading messages")
        else:
            p = _messages(prompt, "prompt") if isinstance(prompt, list) else [{"role": "user", "content": _text(rec, "prompt")}]
        if any(m["role"] != "assistant" for m in c + r):
            raise RowError("chosen", "conversational chosen/rejected must hold assistant messages after the prompt")
        row["prompt_messages"] = json.dumps(p, ensure_ascii=False, separators=(",", ":"))
        row["response_a"] = "\n\n".join(m["content"] for m in c)
        row["response_b"] = "\n\n".join(m["content"] for m in r)
    else:
        c, r = _text(rec, "chosen"), _text(rec, "rejected")
        if prompt is None:  # implicit prompt in standard form: the common text prefix
            k = len(os.path.commonprefix([c, r]))  # type: ignore[list-item]
            cut = max(c.rfind("\n", 0, k), c.rfind(" ", 0, k)) + 1 if k < min(len(c), len(r)) else k  # type: ignore[union-attr]
            p, c, r = c[:cut], c[cut:], r[cut:]  # type: ignore[index]
            if not p.strip():
                raise RowError("prompt", "implicit prompt: chosen and rejected share no prefix")
            row["prompt"] = p
        else:
            row["prompt"] = _text(rec, "prompt")
        row["response_a"], row["response_b"] = c, r
    margin = rec.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise RowError("margin", f"expected a number, got {type(margin).__name__}")
        row["strength"] = float(margin)
    return [row]


def read_trl(path: str | os.PathLike) -> tuple[pl.DataFrame, pl.DataFrame]:
    """TRL preference data: explicit or implicit prompt, standard or conversational."""
    return _collect(path, _parse_trl)


# ---------------------------------------------------------------------------- native
_NATIVE_TEXT = ("prompt", "category", "response_a", "model_a", "response_b", "model_b", "label",
                "annotator_id", "shown_left", "source", "rationale", "client_token")


def _parse_native(rec: dict) -> list[dict]:
    row: dict[str, Any] = {}
    for key in _NATIVE_TEXT:
        v = rec.get(key)
        if v is not None and not isinstance(v, str):
            raise RowError(key, f"expected text, got {type(v).__name__}")
        row[key] = v
    for key in ("response_a", "response_b", "label"):
        if row[key] is None:
            raise RowError(key, "missing field")
    msgs = rec.get("prompt_messages")
    if msgs is not None:
        row["prompt_messages"] = json.dumps(_messages(msgs, "prompt_messages"), ensure_ascii=False, separators=(",", ":"))
    elif row["prompt"] is None:
        raise RowError("prompt", "missing field")
    for key, kinds in (("strength", (int, float)), ("duration_ms", (int,))):
        v = rec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kinds)):
            raise RowError(key, f"expected a number, got {type(v).__name__}")
        row[key] = v
    gold = rec.get("gold")
    if gold is not None and not isinstance(gold, bool):
        raise RowError("gold", f"expected true/false, got {type(gold).__name__}")
    row["gold"] = gold
    if rec.get("created_at") is not None:
        try:
            from .store import _as_utc

            row["created_at"] = _as_utc(rec["created_at"])
        except (TypeError, ValueError) as exc:
            raise RowError("created_at", f"not an ISO 8601 time ({exc})") from exc
    return [row]


def read_native(path: str | os.PathLike) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The workbench's own row format: one label a record, fields named as in the input frame."""
    return _collect(path, _parse_native)


# ---------------------------------------------------------------------------- registry
READERS: dict[str, Callable[..., tuple[pl.DataFrame, pl.DataFrame]]] = {
    "hh-rlhf": read_hh_rlhf,
    "trl": read_trl,
    "workbench": read_native,
}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format from the first record's fields."""
    p = Path(path)
    for _line, rec in read_records(p):
        if isinstance(rec, RowError):
            continue
        keys = set(rec)
        if {"chosen", "rejected"} <= keys:
            c = rec["chosen"]
            if "prompt" not in keys and isinstance(c, str) and ("\n\nHuman:" in c or c.startswith("Human:")):
                return "hh-rlhf"
            return "trl"
        for name, probe in _DETECTORS:
            if probe(keys):
                return name
        break
    raise ImportFormatError(f"{p}: cannot tell the format from its fields; pass format=... (one of {', '.join(READERS)})")


_DETECTORS: list[tuple[str, Callable[[set], bool]]] = [
    ("workbench", lambda keys: {"response_a", "response_b", "label"} <= keys),
]


def file_sha256(path: Path) -> str | None:
    if path.is_dir():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_into(
    store: "Store",
    path: str | os.PathLike,
    format: str = "auto",
    *,
    mapping: dict[str, str] | None = None,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike | None = None,
    annotator_id: str | None = None,
    source: str = "import",
) -> "ImportReport":
    p = Path(path)
    fmt = detect_format(p) if format == "auto" else format
    if fmt not in READERS:
        raise ValueError(f"unknown import format {fmt!r}; expected one of {', '.join(READERS)}")
    reader = READERS[fmt]
    try:
        frame, rejects = reader(p, mapping=mapping) if mapping is not None else reader(p)
    except ImportFormatError as exc:
        msg = str(exc)
        raise ImportFormatError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from exc
    if annotator_id is not None:
        frame = frame.with_columns(pl.col("annotator_id").fill_null(annotator_id))
    if rejects.height and not skip_invalid:
        raise InvalidRows(str(p), rejects)
    try:
        report = store.add_comparisons(
            frame, source=source, annotator_id=annotator_id or "import", path=str(p), format=fmt,
            file_sha256=file_sha256(p), skip_invalid=skip_invalid,
            rows_rejected=rejects.height,
        )
    except InvalidRows as exc:
        raise InvalidRows(str(p), exc.rejects) from None
    if report.rows_rejected:
        out = Path(rejects_path) if rejects_path else Path.cwd() / f"{p.name}.rejects.jsonl"
        all_rejects = pl.concat([rejects, report.rejects]) if report.rejects is not None else rejects
        all_rejects = all_rejects.unique(subset=["line"], keep="first").sort("line")
        out.parent.mkdir(parents=True, exist_ok=True)
        all_rejects.write_ndjson(out)
        from dataclasses import replace

        report = replace(report, rejects_path=str(out))
    return report
