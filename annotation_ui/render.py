"""Untrusted text to safe HTML: Markdown with code blocks, raw HTML shown as text, then sanitized.

Prompt and response texts come from models and imports, so they are untrusted. Rendering takes
two independent steps:

1. Markdown is rendered with raw HTML *disabled*: a ``<script>`` in a response is shown as the
   text ``<script>`` (an annotator judging a response that writes HTML sees what it wrote).
   Images are shown as a text placeholder and never loaded; links with schemes other than
   http(s)/mailto are not made links.
2. The result passes through ``nh3`` (the Rust ``ammonia`` sanitizer) with a short allow-list:
   no ``script``/``style``/``iframe``/``img``, no ``on*`` attributes, no ``style``, only
   http/https/mailto URLs, ``rel="noopener noreferrer nofollow"`` on links.
"""

from __future__ import annotations

import html
import json
from typing import Any, Sequence

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "pre", "code", "em", "strong", "b", "i", "del", "s", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "a", "span", "div", "kbd", "sub", "sup",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"align"}, "td": {"align"}, "div": {"class"}, "span": {"class"}}
URL_SCHEMES = {"http", "https", "mailto"}
MAX_RENDER_CHARS = 200_000


def _image_as_text(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = "".join(t.content for t in (token.children or [])) or "image"
    return f'<span class="wb-image">[image not loaded: {html.escape(alt)}]</span>'


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True}).enable(["table", "strikethrough"])
_MD.add_render_rule("image", _image_as_text)


def sanitize_html(fragment: str) -> str:
    """Keep only harmless markup (see the module docstring)."""
    return nh3.clean(
        fragment, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow", strip_comments=True,
        clean_content_tags={"script", "style"},
    )


def markdown_to_safe_html(text: str | None) -> str:
    """Render untrusted Markdown to sanitized HTML."""
    if text is None:
        return ""
    text = str(text)
    if len(text) > MAX_RENDER_CHARS:
        text = text[:MAX_RENDER_CHARS] + f"\n\n[... {len(text) - MAX_RENDER_CHARS:,} more characters not shown]"
    return sanitize_html(_MD.render(text))


def conversation_to_safe_html(messages: Sequence[dict] | str | None, fallback: str | None = None) -> str:
    """A prompt (one text or a list of ``{role, content}`` messages) as sanitized HTML blocks."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except ValueError:
            messages = None
    if not messages:
        return f'<div class="wb-turn wb-user">{markdown_to_safe_html(fallback)}</div>'
    parts = []
    for m in messages:
        role = str(m.get("role", "user")) if isinstance(m, dict) else "user"
        content = m.get("content", "") if isinstance(m, dict) else str(m)
        css = "wb-user" if role == "user" else ("wb-assistant" if role == "assistant" else "wb-system")
        parts.append(
            f'<div class="wb-turn {css}"><div class="wb-role">{html.escape(role.capitalize())}</div>'
            f"{markdown_to_safe_html(content)}</div>"
        )
    return sanitize_html("".join(parts))
