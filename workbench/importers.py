"""Importers: files of preference data become input frames for :meth:`Store.add_comparisons`.

Every reader returns ``(frame, rejects)``: ``frame`` in :data:`workbench.frames.INPUT_SCHEMA`
(one row a label, ``line`` naming where it came from) and ``rejects`` with ``line, field,
reason`` for rows that cannot be read. :func:`import_into` writes a file in one transaction: a
bad row stops it with an error naming the file, the line and the field, and nothing is written,
unless ``skip_invalid`` is set, when the valid rows go in and the rejects go to a file.

Containers: JSONL (optionally gzipped), a JSON array, CSV/TSV, Parquet, and ``datasets`` folders
written by ``save_to_disk`` (every split of a ``DatasetDict``). ``line`` is the line of the file
(for a JSON array: the line where the record starts; for Parquet and ``datasets``: the row number).

Formats (``format=``; ``"auto"`` guesses from the fields, see :func:`detect_format`):

``hh-rlhf``
    HH-RLHF transcripts: ``chosen``/``rejected`` are whole ``\\n\\nHuman: ...\\n\\nAssistant: ...``
    conversations sharing a prefix; the prompt is the shared conversation, the responses the last
    assistant turns. Label ``a`` (response a = chosen). A transcript whose last assistant turn is
    empty is an "empty text" row (4 of the 2,312 rows of harmless-base test).
``trl``
    TRL preference data: ``prompt``/``chosen``/``rejected``, explicit or implicit prompt, standard
    (texts) or conversational (message lists). Optional ``margin`` (-> strength), ``annotator_id``
    and ``tie`` (``true`` -> label ``tie``, as :mod:`workbench.export` writes with ties kept).
``llmfao``
    LLMFAO crowd votes: the folder (or its ``crowd-comparisons.csv``, with ``pairs-crowd.jsonl``,
    ``models.jsonl`` and ``prompts.jsonl`` beside it). One label per vote; ``model_x`` is response
    a, ``model_y`` response b; ``winner`` left/right/tie is read against the ``left``/``right``
    columns (which model was shown on the left, -> ``shown_left``); texts are joined from
    ``pairs-crowd.jsonl`` on ``id``; the prompt's ``type`` is its category; the worker ``58``
    becomes annotator ``llmfao:58``. Empty model outputs are kept (workers judged them). In the
    published data ``left`` is always ``model_x``. Without ``models.jsonl`` the model ids stand in
    for names, the sides are unknown (``shown_left`` null) and ``model_x`` is taken as the left one.
``pandalm``
    PandaLM test set: ``instruction`` + ``input`` is the prompt, ``response1``/``response2`` the
    responses, ``cmp_key`` (``model1_model2``) the models, ``motivation_app`` the category, and
    every ``annotatorN`` column (0 tie, 1 response1 better, 2 response2 better) one label by
    annotator ``pandalm:annotatorN``. Empty outputs are kept; the six responses the upstream JSON
    stores as the boolean ``true`` are read as the text ``"True"``.
``arena``
    Chatbot-Arena battles: ``model_a``, ``model_b``, ``winner`` in model_a/model_b/tie/
    tie (bothbad) (-> a/b/tie/both_bad) or the one-hot ``winner_model_a``/``winner_model_b``/
    ``winner_tie``; texts from ``conversation_a``/``conversation_b`` (message lists) or
    ``prompt``/``response_a``/``response_b`` (texts, or JSON lists of turns); annotator from
    ``judge`` (or ``annotator_id``/``annotator``); ``tstamp`` (Unix seconds or ISO 8601) ->
    ``created_at``. A single-turn prompt is stored as text, a multi-turn one as a conversation.
``ratings``
    Several scored responses to one prompt, turned into pairs: nested records
    ``{"prompt", "completions": [{"model", "response", "score"}, ...]}`` (UltraFeedback-like;
    ``instruction`` and ``overall_score`` are read too) or flat rows ``prompt, response, score
    [, model]`` grouped by prompt. Every pair of distinct responses (``pairs=all``, the default)
    or only the best against the worst (``pairs=best_worst``) becomes one label: the higher score
    wins, equal scores are a tie, and the score gap is the strength.
``table``
    Any JSONL/CSV/Parquet/``datasets`` table with a column mapping (below); without one, the
    columns are named as the fields (``chosen``/``rejected`` rows get the label ``a``).
``workbench``
    The workbench's own rows: fields named as in the input frame (``prompt`` or
    ``prompt_messages``, ``response_a``, ``response_b``, ``label``, ``model_a``, ...).

Column mapping (``mapping=`` in Python, ``--map FIELD=VALUE`` on the command line):

* ``FIELD: "column"`` reads the field from that column. Fields: ``prompt``, ``prompt_messages``
  (a list of ``{role, content}`` or its JSON text), ``category``, ``response_a``, ``response_b``,
  ``model_a``, ``model_b``, ``label``, ``strength``, ``annotator_id``, ``shown_left``,
  ``rationale``, ``duration_ms``, ``created_at``, ``gold``, ``client_token``; or ``chosen`` and
  ``rejected`` in place of ``response_a``/``response_b``/``label`` (the label is then ``a``).
* ``FIELD: "=value"`` gives every row the constant ``value`` (e.g. ``annotator_id: "=gpt-4"``).
* ``prompt: ["instruction", "input"]`` (or ``"instruction,input"``) joins the non-empty columns
  with a blank line (``prompt_separator`` changes the separator).
* ``label: ["annotator1", "annotator2"]`` (or ``"annotator1,annotator2"``): annotators in columns,
  one label per non-empty column, by annotator ``<annotator_prefix><column>``.
* ``label_values: {"1": "a", "2": "b", "0": "tie"}`` (or ``"1:a,2:b,0:tie"``) maps raw label
  values to ``a``/``b``/``tie``/``both_bad``; without it the label must be one of those
  (case-insensitive).
* ``allow_empty_responses: true`` keeps empty responses (default: only ``llmfao`` and
  ``pandalm``, whose empty outputs are real).
* For the other formats, ``FIELD: "column"`` renames a column before reading (e.g.
  ``{"chosen": "better"}`` for ``trl``), and ``ratings`` takes ``pairs``, ``completions``,
  ``response``, ``score`` and ``model`` as well.

Bad input: a file that cannot be read at all (corrupt Parquet, a broken JSON array, an empty
file) raises :class:`ImportFormatError`; rows that cannot be stored (bad JSON, a missing field, a
wrong type, an unknown label, text that is not UTF-8, an empty text, a text over 1,000,000
characters or a line over 16 MiB, NUL and other control characters except tab and newlines,
bidirectional overrides that can disguise text, lone surrogates) raise
:class:`workbench.frames.InvalidRows` naming the file, line and field, and nothing is written.
HTML and script text is *data*, stored byte for byte; the UI escapes it when it shows it. An
empty file (no records) is an error: it is almost always a wrong path or a truncated download.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import polars as pl

from .frames import INPUT_SCHEMA, InvalidRows, to_input_frame
from .schema import LABELS

if TYPE_CHECKING:
    from .store import ImportReport, Store

REJECTS_SCHEMA = {"line": pl.Int64, "field": pl.String, "reason": pl.String}
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_NESTING = 64

Records = Iterable[tuple[int, "dict | RowError"]]


class ImportFormatError(ValueError):
    """A file that cannot be read as the format asked for (not a row-level problem)."""


class RowError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


# ---------------------------------------------------------------------------- text checks
# C0 controls but tab/newline/carriage return, DEL, bidirectional embeddings/overrides/isolates,
# and lone surrogates (which cannot be stored as UTF-8).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why a text cannot be stored (``None`` if it can)."""
    m = _BAD_CHARS.search(text)
    if m is None:
        return None
    c = ord(m.group())
    if c == 0:
        return "contains a NUL character"
    if 0xD800 <= c <= 0xDFFF:
        return f"not valid Unicode (a lone surrogate U+{c:04X})"
    if c >= 0x202A:
        return f"contains a bidirectional control character (U+{c:04X}) that can disguise text"
    return f"contains a control character (U+{c:04X})"


def check_value(value: Any, key: str, depth: int = 0) -> None:
    """Raise :class:`RowError` for text (at any depth in lists and dicts) that cannot be stored."""
    if isinstance(value, str):
        why = text_problem(value)
        if why:
            raise RowError(key, why)
    elif isinstance(value, (list, tuple, dict)):
        if depth > MAX_NESTING:
            raise RowError(key, f"nested more than {MAX_NESTING} levels deep")
        for v in value.values() if isinstance(value, dict) else value:
            check_value(v, key, depth + 1)


# ---------------------------------------------------------------------------- containers
def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict | RowError]]:
    """Yield ``(line, record)`` from a JSONL/JSON/CSV/Parquet file or a ``datasets`` folder.

    A record that cannot be decoded is yielded as a :class:`RowError` so the caller can reject
    that line alone; a file that cannot be read at all raises :class:`ImportFormatError`.
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
    except (OSError, EOFError, zlib.error) as exc:
        raise ImportFormatError(f"{p}: cannot read ({exc})") from exc
    if base.endswith(".csv") or base.endswith(".tsv"):
        yield from _records_csv(raw, "\t" if base.endswith(".tsv") else ",")
    elif base.endswith(".json") and raw.lstrip()[:1] == b"[":
        yield from _records_json_array(raw)
    else:
        yield from _records_jsonl(raw)


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise RowError("record", "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RowError("record", f"bad JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer with more than 4,300 digits
        raise RowError("record", f"bad JSON ({exc})") from None


def _records_jsonl(raw: bytes) -> Iterator[tuple[int, dict | RowError]]:
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        raw = raw[3:]
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            yield i, RowError("record", f"line longer than {MAX_LINE_BYTES:,} bytes")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield i, RowError("record", f"not UTF-8 text (byte {exc.start + 1} of the line)")
            continue
        try:
            rec = _decode_json(text)
        except RowError as exc:
            yield i, exc
            continue
        yield i, rec if isinstance(rec, dict) else RowError("record", f"not a JSON object (a {type(rec).__name__})")


def _records_json_array(raw: bytes) -> Iterator[tuple[int, dict | RowError]]:
    """A JSON array, record by record, each with the line it starts on."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ImportFormatError(f"line {line}: not UTF-8 text") from exc
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end() + 1  # type: ignore[union-attr]  # past "["
    line, counted = 1, 0

    def at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    pos = ws.match(text, pos).end()  # type: ignore[union-attr]
    if text[pos:pos + 1] == "]":
        return
    while True:
        start_line = at(pos)
        try:
            rec, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise ImportFormatError(f"line {start_line}: JSON nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"line {exc.lineno}: bad JSON ({exc.msg} at column {exc.colno})") from None
        except ValueError as exc:
            raise ImportFormatError(f"line {start_line}: bad JSON ({exc})") from None
        yield start_line, rec if isinstance(rec, dict) else RowError("record", f"not a JSON object (a {type(rec).__name__})")
        pos = ws.match(text, end).end()  # type: ignore[union-attr]
        c = text[pos:pos + 1]
        if c == ",":
            pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
            continue
        if c == "]":
            if text[pos + 1:].strip():
                raise ImportFormatError(f"line {at(pos)}: text after the closing ']'")
            return
        raise ImportFormatError(f"line {at(pos)}: bad JSON (expected ',' or ']' after a record)")


def _records_csv(raw: bytes, delimiter: str) -> Iterator[tuple[int, dict | RowError]]:
    # Bytes that are not UTF-8 become lone surrogates, so the bad field (not the file) is rejected.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportFormatError(f"line 1: bad CSV header ({exc})") from exc
    for i, h in enumerate(header):
        if _SURROGATE_BYTES.search(h):
            raise ImportFormatError(f"line 1: column {i + 1} of the header is not UTF-8 text")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFormatError(f"line {reader.line_num}: bad CSV ({exc})") from exc
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            yield line, RowError("record", f"{len(row)} fields, the header has {len(header)}")
            continue
        rec = dict(zip(header, row))
        bad = next((k for k, v in rec.items() if _SURROGATE_BYTES.search(v)), None)
        yield line, RowError(bad, "not UTF-8 text") if bad is not None else rec


_SURROGATE_BYTES = re.compile("[\udc80-\udcff]")


def _records_datasets(p: Path) -> Iterator[tuple[int, dict | RowError]]:
    try:
        import datasets

        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise ImportFormatError(f"{p}: not a datasets folder written by save_to_disk ({exc})") from exc
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict: take every split
        line = 0
        for split in list(ds.keys()):
            for rec in ds[split]:
                line += 1
                yield line, rec
        return
    for i, rec in enumerate(ds, start=1):
        yield i, rec


# ---------------------------------------------------------------------------- field helpers
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _text(rec: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    v = rec.get(key)
    if _missing(v):
        if required:
            raise RowError(key, "missing field")
        return None
    if not isinstance(v, str):
        raise RowError(key, f"expected text, got {type(v).__name__}")
    if required and not allow_empty and not v.strip():
        raise RowError(key, "empty text")
    return v


def _name(rec: dict, key: str, *, required: bool = False) -> str | None:
    """An identifier-like field (model, annotator, category): text, or an integer written as text."""
    v = rec.get(key)
    if _missing(v) or v == "":
        if required:
            raise RowError(key, "missing field")
        return None
    if isinstance(v, bool):
        raise RowError(key, "expected text, got bool")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if not isinstance(v, str):
        raise RowError(key, f"expected text, got {type(v).__name__}")
    return v


def _number(rec: dict, key: str, *, required: bool = False) -> float | None:
    v = rec.get(key)
    if _missing(v) or v == "":
        if required:
            raise RowError(key, "missing field")
        return None
    if isinstance(v, bool):
        raise RowError(key, "expected a number, got bool")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise RowError(key, f"expected a number, got {v[:40]!r}") from None
    if not isinstance(v, (int, float)):
        raise RowError(key, f"expected a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise RowError(key, "expected a finite number")
    return v


def _integer(rec: dict, key: str) -> int | None:
    v = _number(rec, key)
    if v is None:
        return None
    if not v.is_integer():
        raise RowError(key, f"expected a whole number, got {v}")
    return int(v)


def _boolean(rec: dict, key: str) -> bool | None:
    v = rec.get(key)
    if _missing(v) or v == "":
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[v.strip().lower()]
    raise RowError(key, f"expected true/false, got {v!r:.40}")


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _time(rec: dict, key: str) -> dt.datetime | None:
    v = rec.get(key)
    if _missing(v) or v == "":
        return None
    try:
        if isinstance(v, bool):
            raise TypeError("a bool")
        if isinstance(v, (int, float)):
            return dt.datetime.fromtimestamp(float(v), tz=dt.timezone.utc)
        if isinstance(v, dt.datetime):
            return v.replace(tzinfo=dt.timezone.utc) if v.tzinfo is None else v.astimezone(dt.timezone.utc)
        if isinstance(v, str):
            t = dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
        raise TypeError(type(v).__name__)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise RowError(key, f"not a time (ISO 8601 text or Unix seconds): {exc}") from None


def _label(raw: Any, key: str, values: dict[str, str] | None) -> str:
    if isinstance(raw, bool) or isinstance(raw, (list, dict)):
        raise RowError(key, f"unknown label {raw!r:.40}")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    k = str(raw).strip()
    if values is not None:
        if k in values:
            return values[k]
        raise RowError(key, f"unknown label {k!r:.40} (expected one of {', '.join(map(repr, values))})")
    if k.lower() in LABELS:
        return k.lower()
    raise RowError(key, f"unknown label {k!r:.40} (expected one of {', '.join(LABELS)}; map other values with label_values)")


def _messages(v: Any, key: str) -> list[dict]:
    from .ids import canonical_messages

    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            raise RowError(key, "expected a list of messages (or its JSON text)") from None
    if not isinstance(v, list):
        raise RowError(key, f"expected a list of messages, got {type(v).__name__}")
    try:
        return canonical_messages(v)
    except ValueError as exc:
        raise RowError(key, str(exc)) from exc


def _dump(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def _frame_from_rows(rows: list[dict], rejects: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    cols: dict[str, list] = {c: [r.get(c) for r in rows] for c in INPUT_SCHEMA}
    frame = to_input_frame(cols, n=len(rows))
    return frame, pl.DataFrame(rejects, schema=REJECTS_SCHEMA)


def _renamer(mapping: dict | None, options: Iterable[str] = ()) -> Callable[[dict], dict] | None:
    """For formats other than ``table``: ``{field: column}`` reads ``field`` from ``column``."""
    if not mapping:
        return None
    renames = {k: v for k, v in mapping.items() if k not in set(options) and k != "allow_empty_responses"}
    for k, v in renames.items():
        if not isinstance(v, str):
            raise ValueError(f"mapping {k!r}: expected a column name, got {v!r}")

    def rename(rec: dict) -> dict:
        out = dict(rec)
        for k, v in renames.items():
            out[k] = v[1:] if v.startswith("=") else rec.get(v)
        return out

    return rename


def _collect(
    path: str | os.PathLike,
    parse: Callable[[dict], list[dict]],
    *,
    reads: Iterable[str] | None = None,
    rename: Callable[[dict], dict] | None = None,
    records: Records | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run ``parse`` on every record; a record may give several rows, or raise :class:`RowError`.

    ``reads`` names the record fields whose text is checked (all fields when ``None``).
    """
    rows: list[dict] = []
    rejects: list[dict] = []
    seen = 0
    reads = tuple(reads) if reads is not None else None
    for line, rec in (records if records is not None else read_records(path)):
        seen += 1
        if isinstance(rec, RowError):
            rejects.append({"line": line, "field": rec.field, "reason": rec.reason})
            continue
        try:
            if rename is not None:
                rec = rename(rec)
            for key in (reads if reads is not None else list(rec)):
                if key in rec:
                    check_value(rec[key], key)
            for row in parse(rec):
                row["line"] = line
                rows.append(row)
        except RowError as exc:
            rejects.append({"line": line, "field": exc.field, "reason": exc.reason})
    if seen == 0:
        raise ImportFormatError(f"{path}: no records (the file is empty)")
    return _frame_from_rows(rows, rejects)


# ---------------------------------------------------------------------------- conversations
_HH_TURN = re.compile(r"\n\n(Human|Assistant):(?: |$)")
_HH_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}
_CHAT_NAMES = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


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


def _rest(turns: list[dict], names: dict[str, str]) -> str:
    """The turns after the prompt as one response text (the usual case is one assistant turn)."""
    return turns[0]["content"] + "".join(f"\n\n{names[t['role']]}: {t['content']}" for t in turns[1:])


def split_conversations(c: list[dict], r: list[dict], names: dict[str, str], fields: tuple[str, str]) -> tuple[list[dict], str, str]:
    """Two conversations that share a prompt -> (prompt messages, response a text, response b text).

    The prompt is the shared prefix up to the last user turn; each response is what follows it
    (usually one assistant turn; later turns, if the two diverge earlier, are kept as text).
    """
    if c[:-1] == r[:-1]:
        k = len(c) - 1
    else:
        k = 0
        while k < min(len(c), len(r)) and c[k] == r[k]:
            k += 1
    while k > 0 and c[k - 1]["role"] != "user":
        k -= 1
    if k == 0:
        raise RowError(fields[0], "no shared prompt ending with a user turn")
    if k >= len(c) or k >= len(r) or c[k]["role"] != "assistant" or r[k]["role"] != "assistant":
        raise RowError(fields[1], "each conversation must continue the shared prompt with an assistant turn")
    return c[:k], _rest(c[k:], names), _rest(r[k:], names)


def _prompt_fields(messages: list[dict]) -> dict[str, str]:
    """A single user message is a text prompt; anything longer is a conversation."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return {"prompt": messages[0]["content"]}
    return {"prompt_messages": _dump(messages)}


# ---------------------------------------------------------------------------- HH-RLHF
def _parse_hh(rec: dict) -> list[dict]:
    chosen, rejected = _text(rec, "chosen"), _text(rec, "rejected")
    try:
        c = parse_hh_transcript(chosen)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RowError("chosen", str(exc)) from exc
    try:
        r = parse_hh_transcript(rejected)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RowError("rejected", str(exc)) from exc
    prompt, response_a, response_b = split_conversations(c, r, _HH_NAMES, ("chosen", "rejected"))
    return [{"prompt_messages": _dump(prompt), "response_a": response_a, "response_b": response_b, "label": "a"}]


def read_hh_rlhf(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """HH-RLHF transcripts: ``chosen``/``rejected`` share a prefix; the last turns are compared."""
    return _collect(path, _parse_hh, reads=("chosen", "rejected"), rename=_renamer(mapping))


# ---------------------------------------------------------------------------- TRL
def _parse_trl(rec: dict, allow_empty: bool = False) -> list[dict]:
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if _missing(chosen):
        raise RowError("chosen", "missing field")
    if _missing(rejected):
        raise RowError("rejected", "missing field")
    prompt = rec.get("prompt")
    row: dict[str, Any] = {"label": "a"}
    if isinstance(chosen, list) or isinstance(rejected, list):  # conversational
        c, r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if _missing(prompt):  # implicit prompt: the shared prefix
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
        row["prompt_messages"] = _dump(p)
        row["response_a"] = "\n\n".join(m["content"] for m in c)
        row["response_b"] = "\n\n".join(m["content"] for m in r)
    else:
        c, r = _text(rec, "chosen", allow_empty=allow_empty), _text(rec, "rejected", allow_empty=allow_empty)
        if _missing(prompt):
            # Implicit prompt in standard form: the common prefix, as TRL's ``extract_prompt`` cuts
            # it (character by character; a space just before the cut goes to the completions).
            k = len(os.path.commonprefix([c, r]))  # type: ignore[list-item]
            if k == min(len(c), len(r)):  # type: ignore[arg-type]
                raise RowError("rejected", "implicit prompt: one of chosen and rejected is a prefix of the other")
            if k > 0 and c[k - 1] == " ":  # type: ignore[index]
                k -= 1
            p, c, r = c[:k], c[k:], r[k:]  # type: ignore[index]
            if not p.strip():
                raise RowError("prompt", "implicit prompt: chosen and rejected share no prefix")
            row["prompt"] = p
        else:
            row["prompt"] = _text(rec, "prompt")
        row["response_a"], row["response_b"] = c, r
    margin = _number(rec, "margin")
    if margin is not None:
        row["strength"] = margin
    if _boolean(rec, "tie"):
        row["label"] = "tie"
    row["annotator_id"] = _name(rec, "annotator_id")
    return [row]


def read_trl(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """TRL preference data: explicit or implicit prompt, standard or conversational."""
    allow_empty = _option_bool(mapping, "allow_empty_responses", False)
    return _collect(path, lambda rec: _parse_trl(rec, allow_empty), reads=("prompt", "chosen", "rejected", "annotator_id"),
                    rename=_renamer(mapping))


# ---------------------------------------------------------------------------- native
_NATIVE_TEXT = ("prompt", "category", "response_a", "model_a", "response_b", "model_b", "label",
                "annotator_id", "shown_left", "source", "rationale", "client_token")


def _parse_native(rec: dict) -> list[dict]:
    row: dict[str, Any] = {}
    for key in _NATIVE_TEXT:
        v = rec.get(key)
        if v is not None and not isinstance(v, str):
            raise RowError(key, f"expected text, got {type(v).__name__}")
        row[key] = None if v == "" and key in _FAST_NAMES else v  # an empty name is no name
    for key in ("response_a", "response_b", "label"):
        if row[key] is None:
            raise RowError(key, "missing field")
    if row["label"] not in LABELS:
        raise RowError("label", f"unknown label {row['label']!r:.40} (expected one of {', '.join(LABELS)})")
    msgs = rec.get("prompt_messages")
    if msgs is not None:
        row["prompt_messages"] = _dump(_messages(msgs, "prompt_messages"))
    elif row["prompt"] is None:
        raise RowError("prompt", "missing field")
    for key, kinds in (("strength", (int, float)), ("duration_ms", (int,))):
        v = rec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kinds)):
            raise RowError(key, f"expected a number, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise RowError(key, "expected a finite number")
        row[key] = v
    gold = rec.get("gold")
    if gold is not None and not isinstance(gold, bool):
        raise RowError("gold", f"expected true/false, got {type(gold).__name__}")
    row["gold"] = gold
    row["created_at"] = _time(rec, "created_at")
    return [row]


def read_native(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The workbench's own row format: one label a record, fields named as in the input frame."""
    renames = {k: v for k, v in (mapping or {}).items() if k != "allow_empty_responses" and isinstance(v, str)}
    spec = {f: renames.get(f, f) for f in _NATIVE_TEXT + ("strength", "duration_ms", "gold", "created_at", "prompt_messages")}
    constants = {f: v[1:] for f, v in spec.items() if v.startswith("=")}
    fast = _fast_input(Path(path), {f: c for f, c in spec.items() if f not in constants}, constants, None,
                       _option_bool(mapping, "allow_empty_responses", False), chosen_mode=False)
    if fast is not None:
        return fast, _empty_rejects()
    return _collect(path, _parse_native, reads=_NATIVE_TEXT + ("prompt_messages",), rename=_renamer(mapping))


# ---------------------------------------------------------------------------- table (mapping)
TABLE_FIELDS = (
    "prompt", "prompt_messages", "category", "response_a", "response_b", "model_a", "model_b",
    "label", "chosen", "rejected", "strength", "annotator_id", "shown_left", "rationale",
    "duration_ms", "created_at", "gold", "client_token",
)
TABLE_OPTIONS = ("label_values", "annotator_prefix", "prompt_separator", "allow_empty_responses")


@dataclass(frozen=True)
class TableMapping:
    """Where each field of a comparison comes from in a table (see the module docstring)."""

    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # field -> column(s)
    constants: dict[str, str] = field(default_factory=dict)  # field -> literal value
    label_values: dict[str, str] | None = None
    annotator_prefix: str = ""
    prompt_separator: str = "\n\n"
    identity: bool = False  # no mapping given: fields are read from columns of the same name

    @classmethod
    def parse(cls, mapping: dict | None) -> "TableMapping":
        if not mapping:
            return cls(columns={f: (f,) for f in TABLE_FIELDS}, identity=True)
        columns: dict[str, tuple[str, ...]] = {}
        constants: dict[str, str] = {}
        opts: dict[str, Any] = {}
        for key, value in mapping.items():
            if key in TABLE_OPTIONS:
                opts[key] = value
                continue
            if key not in TABLE_FIELDS:
                raise ValueError(f"unknown mapping field {key!r}; expected one of {', '.join(TABLE_FIELDS + TABLE_OPTIONS)}")
            if isinstance(value, str) and value.startswith("="):
                constants[key] = value[1:]
                continue
            if isinstance(value, str):
                cols = tuple(c.strip() for c in value.split(",")) if key in ("prompt", "label") and "," in value else (value,)
            elif isinstance(value, (list, tuple)) and value and all(isinstance(c, str) for c in value):
                cols = tuple(value)
            else:
                raise ValueError(f"mapping {key!r}: expected a column name (or a list of them), got {value!r}")
            if len(cols) > 1 and key not in ("prompt", "label"):
                raise ValueError(f"mapping {key!r}: only prompt and label take several columns")
            columns[key] = cols
        label_values = opts.get("label_values")
        if isinstance(label_values, str):
            pairs = [p for p in label_values.split(",") if p.strip()]
            try:
                label_values = dict(re.split(r"[:=]", p, maxsplit=1) for p in pairs)
            except ValueError:
                raise ValueError(f"label_values: expected 'raw:label,raw:label', got {opts['label_values']!r}") from None
        if label_values is not None:
            if not isinstance(label_values, dict):
                raise ValueError("label_values must map raw values to a, b, tie or both_bad")
            label_values = {str(k).strip(): str(v).strip() for k, v in label_values.items()}
            bad = sorted(v for v in label_values.values() if v not in LABELS)
            if bad:
                raise ValueError(f"label_values: {bad[0]!r} is not a label (expected one of {', '.join(LABELS)})")
        m = cls(columns=columns, constants=constants, label_values=label_values,
                annotator_prefix=str(opts.get("annotator_prefix", "")),
                prompt_separator=str(opts.get("prompt_separator", "\n\n")))
        m.validate()
        return m

    def has(self, name: str) -> bool:
        return name in self.columns or name in self.constants

    def validate(self) -> None:
        if self.identity:
            return
        pair = self.has("response_a") and self.has("response_b")
        chosen = self.has("chosen") and self.has("rejected")
        if not pair and not chosen:
            raise ValueError("a table mapping needs response_a and response_b (with label), or chosen and rejected")
        if pair and not self.has("label"):
            raise ValueError("a table mapping with response_a/response_b needs a label column (or label='=a')")
        if not self.has("prompt") and not self.has("prompt_messages"):
            raise ValueError("a table mapping needs prompt (or prompt_messages)")
        if len(self.columns.get("label", ())) > 1 and self.has("annotator_id"):
            raise ValueError("with annotators in label columns, the annotator id comes from the column name; drop annotator_id")

    def reads(self) -> tuple[str, ...]:
        return tuple(c for cols in self.columns.values() for c in cols)

    def parse_row(self, rec: dict, allow_empty: bool) -> list[dict]:
        def value(name: str) -> dict:
            """A one-field record holding the field's raw value under its source column name."""
            if name in self.constants:
                return {name: self.constants[name]}
            col = self.columns[name][0]
            return {col: rec.get(col)}

        def get(name: str, fn: Callable[..., Any], **kw: Any) -> Any:
            if not self.has(name):
                return None
            v = value(name)
            return fn(v, next(iter(v)), **kw)

        chosen_mode = (self.has("chosen") and not self.has("response_a")) if not self.identity else (
            "chosen" in rec and "response_a" not in rec)
        row: dict[str, Any] = {}
        # prompt
        msgs_raw = get("prompt_messages", lambda v, k: None if _missing(v[k]) else (v[k], k))
        if msgs_raw is not None:
            row["prompt_messages"] = _dump(_messages(*msgs_raw))
        elif self.has("prompt") and len(self.columns.get("prompt", ())) > 1:
            parts = []
            for col in self.columns["prompt"]:
                t = _text(rec, col, required=False)
                if t is not None and t.strip():
                    parts.append(t)
            if not parts:
                raise RowError(self.columns["prompt"][0], "empty text")
            row["prompt"] = self.prompt_separator.join(parts)
        else:
            if not self.has("prompt"):
                raise RowError("prompt", "missing field")
            row["prompt"] = get("prompt", _text)
        # responses and label
        if chosen_mode:
            row["response_a"] = get("chosen", _text, allow_empty=allow_empty)
            row["response_b"] = get("rejected", _text, allow_empty=allow_empty)
            labels: list[tuple[str, str | None]] = [("a", None)]
        else:
            if not self.has("response_a") or not self.has("response_b"):
                raise RowError("response_a", "missing field")
            row["response_a"] = get("response_a", _text, allow_empty=allow_empty)
            row["response_b"] = get("response_b", _text, allow_empty=allow_empty)
            labels = self._labels(rec)
        for name in ("model_a", "model_b", "category", "annotator_id", "client_token", "shown_left"):
            row[name] = get(name, _name)
        row["rationale"] = get("rationale", _text, required=False)
        row["strength"] = get("strength", _number)
        row["duration_ms"] = get("duration_ms", _integer)
        row["created_at"] = get("created_at", _time)
        row["gold"] = get("gold", _boolean)
        out = []
        for label, annotator in labels:
            r = dict(row, label=label)
            if annotator is not None:
                r["annotator_id"] = annotator
            out.append(r)
        return out

    def _labels(self, rec: dict) -> list[tuple[str, str | None]]:
        if "label" in self.constants:
            return [(_label(self.constants["label"], "label", self.label_values), None)]
        cols = self.columns.get("label", ())
        if not cols:
            raise RowError("label", "missing field")
        if len(cols) == 1:
            raw = rec.get(cols[0])
            if _missing(raw) or raw == "":
                raise RowError(cols[0], "missing label")
            return [(_label(raw, cols[0], self.label_values), None)]
        out = []
        for col in cols:  # annotators in columns: one label per column that has one
            raw = rec.get(col)
            if _missing(raw) or raw == "":
                continue
            out.append((_label(raw, col, self.label_values), self.annotator_prefix + col))
        if not out:
            raise RowError(cols[0], f"no label in any of the annotator columns {', '.join(cols)}")
        return out


def read_table(path: str | os.PathLike, mapping: dict | None = None, *, _allow_empty: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Any table with a column mapping (see the module docstring)."""
    m = TableMapping.parse(mapping)
    allow_empty = _allow_empty or _option_bool(mapping, "allow_empty_responses", False)
    if all(len(c) == 1 for c in m.columns.values()) and not (m.identity and m.label_values is None):
        # (an identity mapping reads labels case-insensitively, which only the careful path does)
        spec = {f: c[0] for f, c in m.columns.items()}
        chosen_mode = m.has("chosen") and not m.has("response_a")
        fast = _fast_input(Path(path), spec, m.constants, m.label_values, allow_empty, chosen_mode)
        if fast is not None:
            return fast, _empty_rejects()
    return _collect(path, lambda rec: m.parse_row(rec, allow_empty), reads=None if m.identity else m.reads())


def _option_bool(mapping: dict | None, key: str, default: bool) -> bool:
    if not mapping or key not in mapping:
        return default
    v = mapping[key]
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[v.strip().lower()]
    raise ValueError(f"{key}: expected true or false, got {v!r}")


# ---------------------------------------------------------------------------- PandaLM
_ANNOTATOR_COL = re.compile(r"^annotator(\d+)$")
PANDALM_MAPPING: dict[str, Any] = {
    "prompt": ["instruction", "input"],
    "response_a": "response1",
    "response_b": "response2",
    "model_a": "_model_a",
    "model_b": "_model_b",
    "category": "motivation_app",
    "label": ["annotator1", "annotator2", "annotator3"],
    "label_values": {"0": "tie", "1": "a", "2": "b"},
    "annotator_prefix": "pandalm:",
}


def read_pandalm(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """PandaLM's test set: every ``annotatorN`` column gives one label (0 tie, 1 a, 2 b)."""
    spec = dict(PANDALM_MAPPING)
    spec.update(mapping or {})
    allow_empty = _option_bool(mapping, "allow_empty_responses", True)
    spec.pop("allow_empty_responses", None)
    by_columns: dict[tuple[str, ...], TableMapping] = {}

    def parse(rec: dict) -> list[dict]:
        rec = dict(rec)
        for key in ("response1", "response2"):
            if isinstance(rec.get(key), bool):  # upstream JSON holds a few "True" answers as true
                rec[key] = "True" if rec[key] else "False"
        key = rec.get("cmp_key")
        if isinstance(key, str) and key.count("_") == 1:
            rec["_model_a"], rec["_model_b"] = key.split("_")
        elif not _missing(key):
            raise RowError("cmp_key", f"expected 'model1_model2', got {key!r:.60}")
        if not (mapping and "label" in mapping):  # annotator columns: as many as the record has
            cols = tuple(sorted((k for k in rec if _ANNOTATOR_COL.match(k)), key=lambda k: int(k[9:])))
            if not cols:
                raise RowError("annotator1", "missing field")
        else:
            cols = ()
        m = by_columns.get(cols)
        if m is None:
            m = by_columns[cols] = TableMapping.parse(dict(spec, label=list(cols)) if cols else spec)
        return m.parse_row(rec, allow_empty)

    reads = ("instruction", "input", "response1", "response2", "cmp_key", "motivation_app")
    return _collect(path, parse, reads=reads)


# ---------------------------------------------------------------------------- arena
ARENA_WINNERS = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "both_bad",
                 "a": "a", "b": "b", "both_bad": "both_bad", "bothbad": "both_bad"}


def _turns(v: Any, key: str) -> list[str | None] | None:
    """``"text"`` -> ``["text"]``; a JSON list of turns (arena-human-preference style) -> the list."""
    if _missing(v):
        return None
    if not isinstance(v, str):
        raise RowError(key, f"expected text, got {type(v).__name__}")
    s = v.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            turns = json.loads(s)
        except (ValueError, RecursionError):
            return [v]
        if isinstance(turns, list) and turns and all(t is None or isinstance(t, str) for t in turns):
            return turns
    return [v]


def _arena_conversation(rec: dict, side: str) -> list[dict] | None:
    conv = rec.get(f"conversation_{side}")
    if not _missing(conv):
        return _messages(conv, f"conversation_{side}")
    prompts = _turns(rec.get("prompt"), "prompt")
    responses = _turns(rec.get(f"response_{side}"), f"response_{side}")
    if prompts is None and responses is None:
        return None
    if prompts is None:
        raise RowError("prompt", "missing field")
    if responses is None:
        raise RowError(f"response_{side}", "missing field")
    if len(prompts) != len(responses):
        raise RowError(f"response_{side}", f"{len(responses)} turns, the prompt has {len(prompts)}")
    out = []
    for p, r in zip(prompts, responses):
        out += [{"role": "user", "content": p or ""}, {"role": "assistant", "content": r or ""}]
    return out


def _parse_arena(rec: dict) -> list[dict]:
    row: dict[str, Any] = {"model_a": _name(rec, "model_a", required=True), "model_b": _name(rec, "model_b", required=True)}
    if not _missing(rec.get("winner")):
        w = rec["winner"]
        if not isinstance(w, str) or w.strip().lower() not in ARENA_WINNERS:
            raise RowError("winner", f"unknown winner {w!r:.40} (expected model_a, model_b, tie or tie (bothbad))")
        row["label"] = ARENA_WINNERS[w.strip().lower()]
    elif any(k in rec for k in ("winner_model_a", "winner_model_b", "winner_tie")):
        flags = {k: _boolean(rec, k) for k in ("winner_model_a", "winner_model_b", "winner_tie")}
        on = [k for k, v in flags.items() if v]
        if len(on) != 1:
            raise RowError("winner_model_a", "expected exactly one of winner_model_a, winner_model_b, winner_tie to be 1")
        row["label"] = {"winner_model_a": "a", "winner_model_b": "b", "winner_tie": "tie"}[on[0]]
    else:
        raise RowError("winner", "missing field")
    c, r = _arena_conversation(rec, "a"), _arena_conversation(rec, "b")
    if c is None or r is None:
        raise RowError("conversation_a", "missing field (a battle needs conversation_a/_b or prompt/response_a/response_b)")
    prompt, row["response_a"], row["response_b"] = split_conversations(c, r, _CHAT_NAMES, ("conversation_a", "conversation_b"))
    row.update(_prompt_fields(prompt))
    for key in ("judge", "annotator_id", "annotator"):
        if not _missing(rec.get(key)):
            row["annotator_id"] = _name(rec, key)
            break
    row["created_at"] = _time(rec, "tstamp") if "tstamp" in rec else _time(rec, "created_at")
    row["category"] = _name(rec, "category")
    return [row]


_ARENA_READS = ("model_a", "model_b", "winner", "conversation_a", "conversation_b", "prompt",
                "response_a", "response_b", "judge", "annotator_id", "annotator", "category")


def read_arena(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Chatbot-Arena battles (``model_a``, ``model_b``, ``winner``) with their texts."""
    return _collect(path, _parse_arena, reads=_ARENA_READS, rename=_renamer(mapping))


# ---------------------------------------------------------------------------- ratings
_RATING_KEYS = {
    "prompt": ("prompt", "instruction", "question"),
    "completions": ("completions", "responses", "candidates"),
    "response": ("response", "completion", "text", "output", "answer"),
    "model": ("model", "generator", "model_name"),
    "score": ("score", "overall_score", "rating", "reward"),
}


@dataclass
class _Scored:
    line: int
    response: str
    model: str | None
    score: float


def _pairs_of(items: list[_Scored], rule: str) -> list[tuple[_Scored, _Scored]]:
    seen: set[tuple[str | None, str]] = set()
    uniq = []
    for it in items:  # the same response (model and text) twice is one response
        if (it.model, it.response) not in seen:
            seen.add((it.model, it.response))
            uniq.append(it)
    if len(uniq) < 2:
        return []
    if rule == "best_worst":
        best = max(range(len(uniq)), key=lambda i: (uniq[i].score, -i))
        worst = min(range(len(uniq)), key=lambda i: (uniq[i].score, -i))
        if best == worst:
            best, worst = 0, len(uniq) - 1
        i, j = sorted((best, worst))
        return [(uniq[i], uniq[j])]
    return [(uniq[i], uniq[j]) for i in range(len(uniq)) for j in range(i + 1, len(uniq))]


def _pair_row(prompt: dict, a: _Scored, b: _Scored, annotator: str | None) -> dict:
    gap = a.score - b.score
    return dict(prompt, response_a=a.response, model_a=a.model, response_b=b.response, model_b=b.model,
                label="a" if gap > 0 else "b" if gap < 0 else "tie",
                strength=abs(gap) if gap else None, annotator_id=annotator)


def read_ratings(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Scored responses to a prompt become pairs: higher score wins, equal scores tie."""
    mapping = dict(mapping or {})
    rule = str(mapping.pop("pairs", "all"))
    if rule not in ("all", "best_worst"):
        raise ValueError(f"pairs must be 'all' or 'best_worst', got {rule!r}")
    allow_empty = _option_bool(mapping, "allow_empty_responses", False)
    mapping.pop("allow_empty_responses", None)
    keys = {k: ((mapping.pop(k),) if k in mapping else v) for k, v in _RATING_KEYS.items()}
    for k, v in keys.items():
        if not all(isinstance(c, str) for c in v):
            raise ValueError(f"mapping {k!r}: expected a column name")
    if mapping:
        raise ValueError(f"unknown ratings mapping fields: {', '.join(mapping)}; expected pairs, {', '.join(_RATING_KEYS)}")

    def pick(rec: dict, what: str) -> str:
        for k in keys[what]:
            if k in rec:
                return k
        return keys[what][0]

    def scored(rec: dict, line: int, where: str = "") -> _Scored:
        rk, mk, sk = pick(rec, "response"), pick(rec, "model"), pick(rec, "score")
        try:
            check_value(rec.get(rk), rk)
            return _Scored(line, _text(rec, rk, allow_empty=allow_empty), _name(rec, mk), _number(rec, sk, required=True))  # type: ignore[arg-type]
        except RowError as exc:
            raise RowError(where + exc.field, exc.reason) from None

    def prompt_of(rec: dict) -> dict:
        pk = pick(rec, "prompt")
        v = rec.get(pk)
        check_value(v, pk)
        if isinstance(v, list):
            return {"prompt_messages": _dump(_messages(v, pk))}
        return {"prompt": _text(rec, pk)}

    rows: list[dict] = []
    rejects: list[dict] = []
    flat: dict[str, tuple[dict, list[_Scored], str | None]] = {}
    seen = 0
    for line, rec in read_records(path):
        seen += 1
        if isinstance(rec, RowError):
            rejects.append({"line": line, "field": rec.field, "reason": rec.reason})
            continue
        try:
            prompt = prompt_of(rec)
            annotator = _name(rec, "annotator") or _name(rec, "judge")
            ck = pick(rec, "completions")
            if ck in rec:
                comps = rec[ck]
                if not isinstance(comps, list):
                    raise RowError(ck, f"expected a list of scored responses, got {type(comps).__name__}")
                items = []
                for i, comp in enumerate(comps):
                    if not isinstance(comp, dict):
                        raise RowError(f"{ck}[{i}]", "expected an object with a response and a score")
                    items.append(scored(comp, line, f"{ck}[{i}]."))
                pairs = _pairs_of(items, rule)
                if not pairs:
                    raise RowError(ck, "fewer than two different scored responses; nothing to compare")
                for a, b in pairs:
                    rows.append(dict(_pair_row(prompt, a, b, annotator), line=line))
            else:
                item = scored(rec, line)
                key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
                flat.setdefault(key, (prompt, [], annotator))[1].append(item)
        except RowError as exc:
            rejects.append({"line": line, "field": exc.field, "reason": exc.reason})
    if seen == 0:
        raise ImportFormatError(f"{path}: no records (the file is empty)")
    for prompt, items, annotator in flat.values():
        pairs = _pairs_of(items, rule)
        if not pairs:
            rejects.append({"line": items[0].line, "field": keys["prompt"][0],
                            "reason": "only one scored response for this prompt; nothing to compare"})
        for a, b in pairs:
            rows.append(dict(_pair_row(prompt, a, b, annotator), line=a.line))
    return _frame_from_rows(rows, sorted(rejects, key=lambda r: r["line"]))


# ---------------------------------------------------------------------------- LLMFAO
LLMFAO_VOTES = "crowd-comparisons.csv"
LLMFAO_PAIRS = "pairs-crowd.jsonl"


def llmfao_votes_file(path: str | os.PathLike) -> Path:
    """The votes CSV of an LLMFAO folder (or the CSV itself)."""
    p = Path(path)
    if p.is_dir():
        f = p / LLMFAO_VOTES
        if not f.exists():
            found = sorted(p.glob("*comparisons*.csv"))
            if not found:
                raise ImportFormatError(f"{p}: no {LLMFAO_VOTES} in this folder")
            f = found[0]
        return f
    return p


def _sidecar(path: Path, what: str, by: str = "id") -> dict[Any, dict]:
    """A JSONL file beside the votes, keyed on ``by``; a bad line there stops the import."""
    out: dict[Any, dict] = {}
    for line, rec in read_records(path):
        if isinstance(rec, RowError):
            raise ImportFormatError(f"{path}: line {line}: field {rec.field!r}: {rec.reason}")
        key = rec.get(by)
        if key is None:
            raise ImportFormatError(f"{path}: line {line}: field {by!r}: missing field")
        if key in out:
            raise ImportFormatError(f"{path}: line {line}: field {by!r}: {what} {key!r} appears twice")
        out[key] = rec
    return out


def _int_key(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return v


def read_llmfao(path: str | os.PathLike, mapping: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LLMFAO crowd votes (``crowd-comparisons.csv``), texts joined from ``pairs-crowd.jsonl``."""
    votes = llmfao_votes_file(path)
    folder = votes.parent
    pairs_file = folder / LLMFAO_PAIRS
    if not pairs_file.exists():
        found = sorted(folder.glob("pairs*.jsonl"))
        if not found:
            raise ImportFormatError(f"{folder}: no {LLMFAO_PAIRS} beside {votes.name} (the texts of the pairs)")
        pairs_file = found[0]
    pairs = _sidecar(pairs_file, "pair")
    models = {k: v.get("name") for k, v in _sidecar(folder / "models.jsonl", "model").items()} if (folder / "models.jsonl").exists() else {}
    prompts = _sidecar(folder / "prompts.jsonl", "prompt") if (folder / "prompts.jsonl").exists() else {}
    allow_empty = _option_bool(mapping, "allow_empty_responses", True)
    rename = _renamer({k: v for k, v in (mapping or {}).items() if k != "allow_empty_responses"})
    pf = pairs_file.name

    def model_name(v: Any) -> str:
        name = models.get(_int_key(v))
        return str(name) if isinstance(name, str) and name else str(v)

    def parse(rec: dict) -> list[dict]:
        if rename is not None:
            rec = rename(rec)
        pid = _int_key(_name(rec, "id", required=True))
        pair = pairs.get(pid)
        if pair is None:
            raise RowError("id", f"no pair with id {pid} in {pf}")
        mx, my = _name(rec, "model_x", required=True), _name(rec, "model_y", required=True)
        if str(pair.get("model_x")) != mx or str(pair.get("model_y")) != my:
            raise RowError("model_x", f"models {mx}/{my} do not match pair {pid} of {pf} ({pair.get('model_x')}/{pair.get('model_y')})")
        for key in ("result_x", "result_y", "text"):
            if key in pair:
                check_value(pair[key], f"{pf}:{key}")
        ra = _text(pair, "result_x", allow_empty=allow_empty)
        rb = _text(pair, "result_y", allow_empty=allow_empty)
        prompt_rec = prompts.get(_int_key(pair.get("prompt", rec.get("prompt"))), {})
        text = pair.get("text") if isinstance(pair.get("text"), str) else prompt_rec.get("text")
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"{pf}:text", "missing prompt text")
        name_x, name_y = model_name(mx), model_name(my)
        left, right = _name(rec, "left"), _name(rec, "right")
        shown_left = None
        if left is not None and models:  # the names tell which model was on the left
            if left == name_x and right in (None, name_y):
                shown_left = "a"
            elif left == name_y and right in (None, name_x):
                shown_left = "b"
            else:
                raise RowError("left", f"{left!r} is neither model_x ({name_x!r}) nor model_y ({name_y!r})")
        winner = _name(rec, "winner", required=True)
        w = winner.strip().lower()  # type: ignore[union-attr]
        if w == "tie":
            label = "tie"
        elif w in ("left", "right"):
            x_won = (w == "left") == (shown_left != "b")  # not knowing the sides, x is taken as left (LLMFAO's way)
            label = "a" if x_won else "b"
        else:
            raise RowError("winner", f"unknown winner {winner!r:.40} (expected left, right or tie)")
        category = pair.get("type") if isinstance(pair.get("type"), str) else prompt_rec.get("type")
        return [{
            "prompt": text, "category": category if isinstance(category, str) else None,
            "response_a": ra, "model_a": name_x, "response_b": rb, "model_b": name_y,
            "label": label, "shown_left": shown_left, "annotator_id": f"llmfao:{_name(rec, 'worker', required=True)}",
        }]

    return _collect(votes, parse, reads=("id", "model_x", "model_y", "worker", "winner", "left", "right"))


# ---------------------------------------------------------------------------- fast path
# A clean JSONL or Parquet file in the workbench or table format is read whole with Arrow and
# checked column by column (about 10x faster than record by record). Anything unusual (a blank
# line, a type Arrow would have to guess, a bad row, several columns for one field) goes to the
# record-by-record path instead, which names the line and field of every problem.
_BAD_CHARS_RUST = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\u{202A}-\u{202E}\u{2066}-\u{2069}]"
_FAST_TEXT = ("prompt", "response_a", "response_b", "rationale")
_FAST_NAMES = ("model_a", "model_b", "category", "annotator_id", "client_token", "shown_left", "source")
_FAST_NUMBERS = {"strength": (pl.Float64, pl.Float32, pl.Int64, pl.Int32), "duration_ms": (pl.Int64, pl.Int32)}


def _arrow_frame(path: Path, wanted: Iterable[str]) -> pl.DataFrame | None:
    """The ``wanted`` columns of the whole file, one row a line, or ``None`` if it is not plainly that.

    Only flat columns (text, numbers, booleans, times) are taken; a nested one sends the file to
    the careful path (a hostile file can nest thousands of levels deep).
    """
    import pyarrow as pa

    name = path.name.lower()
    if path.is_dir():
        return None
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            n_lines = None
        elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            import numpy as np
            import pyarrow.json as pa_json

            opener: Callable[..., Any] = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as fh:
                raw = fh.read()
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip() or b"\r" in raw or raw.startswith(b"\n") or b"\n\n" in raw or len(raw) > (1 << 31):
                return None
            raw.decode("utf-8")  # Arrow's JSON reader does not check (and polars would panic on bad text)
            ends = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 10)
            n_lines = len(ends) + (0 if raw.endswith(b"\n") else 1)
            if len(raw) > MAX_LINE_BYTES and np.diff(ends, prepend=-1, append=len(raw)).max() > MAX_LINE_BYTES:
                return None
            if _nesting_depth(np.frombuffer(raw, dtype=np.uint8), ends) > MAX_NESTING:
                return None  # Arrow's reader takes time growing faster than the square of the depth
            table = pa_json.read_json(pa.BufferReader(raw), read_options=pa_json.ReadOptions(block_size=8 << 20))
            schema = table.schema
        else:
            return None
        cols = [c for c in dict.fromkeys(wanted) if c in schema.names]
        flat = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
                pa.types.is_boolean, pa.types.is_null, pa.types.is_timestamp)
        if any(not any(ok(schema.field(c).type) for ok in flat) for c in cols):
            return None
        if n_lines is None:
            frame = pl.read_parquet(path, columns=cols)
        else:
            if table.num_rows != n_lines:
                return None
            frame = pl.from_arrow(table.select(cols)) if cols else pl.DataFrame({"_": [None] * n_lines})
        return frame if isinstance(frame, pl.DataFrame) else None
    except Exception:  # anything Arrow cannot read plainly: the careful path will say why
        return None


def _nesting_depth(b: Any, ends: Any) -> int:
    """The deepest bracket nesting of any line (brackets inside strings count too: an upper bound)."""
    import numpy as np

    pos = np.flatnonzero((b == 91) | (b == 123) | (b == 93) | (b == 125))
    if len(pos) == 0:
        return 0
    delta = np.where((b[pos] == 91) | (b[pos] == 123), 1, -1)
    depth = np.cumsum(delta)
    line = np.searchsorted(ends, pos)
    first = np.flatnonzero(np.r_[True, line[1:] != line[:-1]])
    base = np.repeat((depth - delta)[first], np.diff(np.r_[first, len(pos)]))
    return int((depth - base).max())


def _fast_input(path: Path, spec: dict[str, str], constants: dict[str, str], label_values: dict[str, str] | None,
                allow_empty: bool, chosen_mode: bool) -> pl.DataFrame | None:
    """An input frame read column by column, or ``None`` when the careful path must run."""
    frame = _arrow_frame(path, spec.values())
    if frame is None or frame.height == 0:
        return None
    n = frame.height
    cols: dict[str, pl.Series] = {}
    for fld, col in spec.items():
        if col not in frame.columns:
            continue
        s = frame[col]
        if s.dtype == pl.Null or s.null_count() == n:
            continue
        if fld in _FAST_TEXT or fld in _FAST_NAMES or (fld == "label" and label_values is None):
            if s.dtype != pl.String:
                return None
            if fld in _FAST_NAMES:  # an empty name is no name (as _name reads it)
                s = s.replace("", None)
        elif fld == "label":
            if s.dtype not in (pl.String, pl.Int64, pl.Int32):
                return None
            s = s.cast(pl.String)
        elif fld in _FAST_NUMBERS:
            if s.dtype not in _FAST_NUMBERS[fld] or (s.dtype.is_float() and not s.drop_nulls().is_finite().all()):
                return None
        elif fld == "gold":
            if s.dtype != pl.Boolean:
                return None
        elif fld == "created_at" and isinstance(s.dtype, pl.Datetime):
            s = s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else s.dt.convert_time_zone("UTC")
        else:  # prompt_messages, created_at: the careful path converts them
            return None
        cols[fld] = s.alias(fld)
    for fld, value in constants.items():
        if fld not in _FAST_TEXT + _FAST_NAMES + ("label",):
            return None
        if value == "" and fld in _FAST_NAMES:
            continue
        cols[fld] = pl.Series(fld, [value] * n, dtype=pl.String)
    if chosen_mode:
        if "response_a" in cols or "label" in cols:
            return None
        if "chosen" in spec and spec["chosen"] in frame.columns and "rejected" in spec and spec["rejected"] in frame.columns:
            for fld, src in (("response_a", "chosen"), ("response_b", "rejected")):
                s = frame[spec[src]]
                if s.dtype != pl.String:
                    return None
                cols[fld] = s.alias(fld)
        cols["label"] = pl.Series("label", ["a"] * n, dtype=pl.String)
    required = ("prompt", "response_a", "response_b", "label")
    if any(r not in cols or cols[r].null_count() for r in required):
        return None
    label = cols["label"]
    if label_values is not None:
        if not label.str.strip_chars().is_in(list(label_values)).all():
            return None
        cols["label"] = label.str.strip_chars().replace_strict(label_values, return_dtype=pl.String)
    elif not label.is_in(list(LABELS)).all():
        return None
    bad = pl.lit(False)
    checked = pl.DataFrame([c for f, c in cols.items() if c.dtype == pl.String])
    for c in checked.columns:
        bad = bad | pl.col(c).str.contains(_BAD_CHARS_RUST).fill_null(False)
    blank = [r for r in ("prompt",) + (() if allow_empty else ("response_a", "response_b"))]
    for c in blank:
        bad = bad | (pl.col(c).str.strip_chars() == "")
    if checked.select(bad.any()).item():
        return None
    cols["line"] = pl.int_range(1, n + 1, dtype=pl.Int64, eager=True).alias("line")
    return to_input_frame(cols, n=n)


def _empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTS_SCHEMA)


# ---------------------------------------------------------------------------- registry
READERS: dict[str, Callable[..., tuple[pl.DataFrame, pl.DataFrame]]] = {
    "hh-rlhf": read_hh_rlhf,
    "trl": read_trl,
    "llmfao": read_llmfao,
    "pandalm": read_pandalm,
    "arena": read_arena,
    "ratings": read_ratings,
    "table": read_table,
    "workbench": read_native,
}
# Formats whose empty responses are real model outputs that annotators judged.
EMPTY_RESPONSES_ALLOWED = frozenset({"llmfao", "pandalm"})

_LLMFAO_KEYS = {"id", "model_x", "model_y", "worker", "winner"}


def _probe(keys: set, first: dict) -> str | None:
    if {"chosen", "rejected"} <= keys:
        c = first.get("chosen")
        if "prompt" not in keys and isinstance(c, str) and ("\n\nHuman:" in c or c.startswith("Human:")):
            return "hh-rlhf"
        return "trl"
    if _LLMFAO_KEYS <= keys:
        return "llmfao"
    if {"response1", "response2"} <= keys and any(_ANNOTATOR_COL.match(k) for k in keys):
        return "pandalm"
    if {"model_a", "model_b"} <= keys and ({"winner"} & keys or {"winner_model_a", "winner_model_b"} <= keys):
        return "arena"
    if {"response_a", "response_b", "label"} <= keys:
        return "workbench"
    if keys & set(_RATING_KEYS["completions"]) or (
        keys & set(_RATING_KEYS["response"]) and keys & set(_RATING_KEYS["score"]) and keys & set(_RATING_KEYS["prompt"])
    ):
        return "ratings"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a file or folder from its fields (the first readable record)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir() and (p / LLMFAO_VOTES).exists():
        return "llmfao"
    keys: set = set()
    for _line, rec in read_records(p):
        if isinstance(rec, RowError):
            continue
        keys = set(rec)
        fmt = _probe(keys, rec)
        if fmt is not None:
            return fmt
        break
    shown = ", ".join(sorted(map(str, keys))[:12]) or "none readable"
    raise ImportFormatError(
        f"{p}: cannot tell the format from its fields ({shown}); pass format=... (one of "
        f"{', '.join(READERS)}), e.g. format='table' with a column mapping"
    )


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
    mapping: dict[str, Any] | None = None,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike | None = None,
    annotator_id: str | None = None,
    source: str = "import",
) -> "ImportReport":
    """Import a file or folder in one transaction (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    fmt = format.strip().lower().replace("_", "-")
    fmt = detect_format(p) if fmt == "auto" else {"hhrlhf": "hh-rlhf", "native": "workbench"}.get(fmt.replace("-", ""), fmt)
    if fmt not in READERS:
        raise ValueError(f"unknown import format {fmt!r}; expected one of {', '.join(READERS)}")
    allow_empty = _option_bool(mapping, "allow_empty_responses", fmt in EMPTY_RESPONSES_ALLOWED)
    data_path = llmfao_votes_file(p) if fmt == "llmfao" else p
    try:
        frame, rejects = READERS[fmt](p, mapping=mapping)
    except ImportFormatError as exc:
        msg = str(exc)
        raise ImportFormatError(msg if msg.startswith((str(p), str(data_path.parent))) else f"{data_path}: {msg}") from None
    if annotator_id is not None:
        frame = frame.with_columns(pl.col("annotator_id").fill_null(annotator_id))
    if rejects.height and not skip_invalid:
        raise InvalidRows(str(data_path), rejects)
    try:
        report = store.add_comparisons(
            frame, source=source, annotator_id=annotator_id or "import", path=str(data_path), format=fmt,
            file_sha256=file_sha256(data_path), skip_invalid=skip_invalid,
            rows_rejected=rejects.height, allow_empty_responses=allow_empty,
        )
    except InvalidRows as exc:
        raise InvalidRows(str(data_path), exc.rejects) from None
    if report.rows_rejected:
        out = Path(rejects_path) if rejects_path else Path.cwd() / f"{data_path.name}.rejects.jsonl"
        parts = [rejects] + ([report.rejects] if report.rejects is not None and report.rejects.height else [])
        all_rejects = pl.concat(parts).unique(subset=["line"], keep="first").sort("line")
        out.parent.mkdir(parents=True, exist_ok=True)
        all_rejects.write_ndjson(out)
        report = replace(report, rejects_path=str(out), rejects=all_rejects)
    return report
