"""Content-addressed identifiers and canonical forms of prompts and responses.

A prompt is either a text or a conversation (a list of ``{role, content}`` messages, as in
``transformers`` chat templates). Its id is a hash of its canonical form, so importing the same
data twice adds nothing. A response id hashes the prompt id, the generator (model) that wrote it
and its text: the same words from two models are two responses, as an arena needs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

ROLES = ("system", "user", "assistant", "tool")
_ID_HEX = 24  # 96 bits: collision-free for any realistic store


SEP = "\x1f"  # between (and after) the parts of a hashed key


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()[:_ID_HEX]


def digest_keys(keys: Iterable[str], prefix: str = "") -> list[str]:
    """``prefix + _digest(key)`` for many keys at once (the bulk path's hashing).

    A key made of several parts must already hold them joined as ``part1 SEP part2 SEP ...``
    without the final separator: ``digest_keys([a + SEP + b])[0] == _digest(a, b)``.
    """
    sha = hashlib.sha256
    n = _ID_HEX
    return [prefix + sha((k + SEP).encode("utf-8", "surrogatepass")).hexdigest()[:n] for k in keys]


def digest_series(keys: Any, prefix: str = "") -> Any:
    """:func:`digest_keys` of a polars string Series, as a Series (the same ids, less Python).

    SHA-256 runs once per key in C (``hashlib``); the separator, the hex form, the truncation
    and the prefix are done column-wise by polars instead of once per key in Python.
    """
    import polars as pl

    # polars strings are valid UTF-8 (no lone surrogates), so their bytes are what
    # ``str.encode("utf-8", "surrogatepass")`` gives; ``map`` spares a Python frame per key.
    raw = [h.digest() for h in map(hashlib.sha256, (keys + SEP).cast(pl.Binary).to_list())]
    out = pl.Series(keys.name, raw, dtype=pl.Binary).bin.encode("hex").str.slice(0, _ID_HEX)
    return (prefix + out) if prefix else out


def canonical_messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    """Validate a conversation and return it as a list of plain ``{role, content}`` dicts."""
    out: list[dict[str, str]] = []
    if isinstance(messages, (str, bytes)):
        raise ValueError("a conversation must be a list of {role, content} messages, got a string")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} is not a mapping with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {i} has non-text content ({type(content).__name__})")
        out.append({"role": role, "content": content})
    if not out:
        raise ValueError("a conversation needs at least one message")
    return out


def as_text_prompt(messages: list[dict[str, str]]) -> str | None:
    """A conversation of one user message is the same prompt as its text: return that text.

    Text prompts read as one user message, so both forms share one id and one row.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return None


def render_messages(messages: list[dict[str, str]]) -> str:
    """A conversation as readable text: ``User: ...\\n\\nAssistant: ...``."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def prompt_key(text: str | None, messages: list[dict[str, str]] | None) -> str:
    """The canonical string a prompt id is the hash of."""
    if messages is not None:
        return "messages\x1e" + json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return "text\x1e" + (text or "")


def prompt_id_of(key: str) -> str:
    return "p" + _digest(key)


def response_id_of(prompt_id: str, text: str, model: str | None) -> str:
    return "r" + _digest(prompt_id, model or "", text)


def comparison_id_of(client_token: str) -> str:
    return "c" + _digest(client_token)


def import_token(*parts: Any) -> str:
    """A deterministic client token for an imported label, so a re-import adds nothing."""
    return "imp:" + _digest(*("" if p is None else str(p) for p in parts))
