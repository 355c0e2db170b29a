"""What the annotation app does, independent of how it is reached (Gradio events or the JSON API).

Every method takes the caller's :class:`workbench.auth.Account` (looked up from the session on
every call, so a role change or a disabled account takes effect at once), validates its inputs
(:class:`BadRequest` with a clear message and no change otherwise), and checks the role for admin
work. Labels are committed to the store before a method returns, so an acknowledged label
survives the server being killed.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import polars as pl

from typing import TYPE_CHECKING

from workbench import assign, auth
from workbench.auth import Account, AuthError

from .render import conversation_to_safe_html, markdown_to_safe_html

if TYPE_CHECKING:
    from .admin import AdminView

CHOICES = ("left", "right", "tie", "both_bad")
STRENGTHS = {None: None, "": None, "none": None, "slightly": 1.0, "much": 2.0, 1: 1.0, 2: 2.0}  # 1.0 == 1 as a key
MAX_RATIONALE_CHARS = 5000
GUIDELINES_KEY = "ui.guidelines"
MAX_GUIDELINES_CHARS = 100_000
_ASSIGNMENT_ID = re.compile(r"^[0-9a-f]{32}$")
_CLIENT_TOKEN = re.compile(r"^[A-Za-z0-9_.:\-]{8,120}$")
DEFAULT_GUIDELINES = """\
**Which response is better?** Read the prompt, then both responses.

* **A better / B better** (keys **1** / **2**): one response is more helpful, correct and safe.
  Say how much with *slightly* or *much* if you can.
* **Tie** (**3**): equally good. **Both bad** (**4**): neither is acceptable.
* **Skip** (**s**) a pair you cannot judge; **Undo** (**u**) takes back your last label.
* Judge the content, not the position: which side a response is shown on is random.
"""


class BadRequest(ValueError):
    """An input from the browser that the server refuses (nothing was changed)."""


@dataclass(frozen=True)
class Item:
    """One pair as an annotator sees it (no hint of which response is A or whether it is gold)."""

    assignment_id: str
    prompt_html: str
    left_html: str
    right_html: str
    prompt_text: str
    left_text: str
    right_text: str
    category: str | None
    expires_at: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _TextCache:
    """Texts and their sanitized HTML, per process (texts are content-addressed and immutable).

    A miss costs one query for the prompt and one for the responses; each text is rendered once.
    """

    def __init__(self, store: Any, size: int = 20_000):
        import sqlalchemy as sa
        from workbench.schema import prompts, responses

        self.store, self.size = store, size
        self.prompts: OrderedDict[str, tuple[str, str | None, str]] = OrderedDict()  # id -> text, category, html
        self.responses: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> text, html
        self.lock = threading.Lock()
        self._prompt_sql = sa.select(prompts.c.text, prompts.c.messages, prompts.c.category).where(prompts.c.prompt_id == sa.bindparam("pid"))
        self._responses_sql = sa.select(responses.c.response_id, responses.c.text).where(responses.c.response_id.in_(sa.bindparam("rids", expanding=True)))

    def _put(self, cache: OrderedDict, key: str, value: Any) -> None:
        cache[key] = value
        if len(cache) > self.size:
            cache.popitem(last=False)

    def get(self, prompt_id: str, response_ids: tuple[str, ...]) -> tuple[tuple[str, str | None, str], list[tuple[str, str]]]:
        with self.lock:
            prompt = self.prompts.get(prompt_id)
            found = {r: self.responses.get(r) for r in response_ids}
        missing = [r for r, v in found.items() if v is None]
        if prompt is None or missing:
            with self.store.transaction(write=False) as conn:
                if prompt is None:
                    row = conn.execute(self._prompt_sql, {"pid": prompt_id}).first()
                    text, messages, category = (row[0], row[1], row[2]) if row else ("", None, None)
                    prompt = (text, category, conversation_to_safe_html(messages, fallback=text))
                if missing:
                    texts = dict(conn.execute(self._responses_sql, {"rids": missing}).all())
                    for r in missing:
                        t = texts.get(r) or ""
                        found[r] = (t, markdown_to_safe_html(t))
            with self.lock:
                self._put(self.prompts, prompt_id, prompt)
                for r in missing:
                    self._put(self.responses, r, found[r])
        return prompt, [found[r] for r in response_ids]  # type: ignore[misc]


class AnnotationService:
    """The annotation app's operations on one store."""

    def __init__(self, store: Any, *, scorer: Callable[[pl.DataFrame], Any] | None = None):
        self.store = store
        self.scorer = scorer
        assign.ensure_tables(store)
        auth._ensure(store)  # noqa: SLF001
        self.reconciled = assign.reconcile(store)
        self.texts = _TextCache(store)

    # ------------------------------------------------------------------ accounts
    def login(self, annotator_id: Any, password: Any) -> tuple[str, Account]:
        if not isinstance(annotator_id, str) or not isinstance(password, str):
            raise BadRequest("name and password are texts")
        acct = auth.authenticate(self.store, annotator_id.strip(), password)
        return auth.issue_session(self.store, acct.annotator_id), acct

    def check_password(self, annotator_id: str, password: str) -> bool:
        try:
            auth.authenticate(self.store, annotator_id, password)
            return True
        except (AuthError, ValueError):
            return False

    def session(self, token: Any) -> Account:
        return auth.session_account(self.store, token)

    def account(self, annotator_id: Any) -> Account:
        if not isinstance(annotator_id, str) or not annotator_id:
            raise AuthError("not logged in")
        return auth.account(self.store, annotator_id)

    def logout(self, token: str) -> None:
        auth.end_session(self.store, token)

    # ------------------------------------------------------------------ annotate
    def next_item(self, acct: Account) -> Item | None:
        """The annotator's current lease, or a new one; ``None`` when their queue is empty."""
        a = assign.assign_next_pair(self.store, acct.annotator_id, scorer=self.scorer, fallback_strategy="balanced")
        return self._item(a) if a is not None else None

    def _item(self, a: assign.Assignment) -> Item:
        left_id, right_id = (a.response_a_id, a.response_b_id) if a.shown_left == "a" else (a.response_b_id, a.response_a_id)
        (text, category, prompt_html), [(left, left_html), (right, right_html)] = self.texts.get(a.prompt_id, (left_id, right_id))
        return Item(
            assignment_id=a.assignment_id, prompt_html=prompt_html, left_html=left_html, right_html=right_html,
            prompt_text=text, left_text=left, right_text=right, category=category, expires_at=a.expires_at,
        )

    def submit(self, acct: Account, assignment_id: Any, choice: Any, strength: Any = None, rationale: Any = None) -> dict:
        """Record a label for one of the caller's assignments (idempotent) and lease the next pair."""
        assignment_id = _check_assignment_id(assignment_id)
        if choice not in CHOICES:
            raise BadRequest(f"choice must be one of {', '.join(CHOICES)}; got {str(choice)[:40]!r}")
        strength = _check_strength(strength, choice)
        rationale = _check_rationale(rationale)
        try:
            _a, receipt, nxt = assign.record_label_and_next(
                self.store, assignment_id, acct.annotator_id, choice, strength=strength, rationale=rationale,
                scorer=self.scorer, fallback_strategy="balanced")
        except assign.AssignmentError as exc:
            raise BadRequest(str(exc)) from exc
        return {"recorded": receipt.created, "comparison_id": receipt.comparison_id, "event_id": receipt.event_id,
                "next": self._item(nxt) if nxt is not None else None}

    def skip(self, acct: Account, assignment_id: Any) -> dict:
        assignment_id = _check_assignment_id(assignment_id)
        try:
            skipped = assign.skip(self.store, assignment_id, acct.annotator_id)
        except assign.AssignmentError as exc:
            raise BadRequest(str(exc)) from exc
        return {"skipped": skipped, "next": self.next_item(acct)}

    def undo(self, acct: Account, client_token: Any) -> dict:
        """Retract the caller's last label (a superseding event); that pair comes back next."""
        if not isinstance(client_token, str) or not _CLIENT_TOKEN.match(client_token):
            raise BadRequest("client_token must be 8-120 characters of letters, digits, '_', '.', ':' or '-'")
        token = "undo:" + hashlib.sha256(f"{acct.annotator_id}\x1f{client_token}".encode()).hexdigest()[:48]
        receipt, _again = assign.undo_last(self.store, acct.annotator_id, client_token=token)
        return {"undone": receipt.comparison_id if receipt is not None else None,
                "recorded": bool(receipt is not None and receipt.created), "next": self.next_item(acct)}

    def progress(self, acct: Account) -> dict:
        return assign.progress(self.store, acct.annotator_id)

    def guidelines(self, acct: Account | None = None) -> str:
        return self.store.get_setting(GUIDELINES_KEY, DEFAULT_GUIDELINES)

    def guidelines_html(self, acct: Account | None = None) -> str:
        return markdown_to_safe_html(self.guidelines(acct))

    # ------------------------------------------------------------------ admin
    def set_guidelines(self, acct: Account, text: Any) -> None:
        auth.require_admin(acct)
        if not isinstance(text, str) or len(text) > MAX_GUIDELINES_CHARS:
            raise BadRequest(f"guidelines are a text of at most {MAX_GUIDELINES_CHARS:,} characters")
        self.store.set_setting(GUIDELINES_KEY, text)

    def set_assign_config(self, acct: Account, **settings: Any) -> assign.AssignConfig:
        auth.require_admin(acct)
        try:
            cfg = assign.AssignConfig.from_dict(settings)
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from exc
        if cfg.strategy == "active" and self.scorer is None:
            raise BadRequest("the active strategy needs a fitted model: fit a leaderboard first (admin view) or start the server with a scorer")
        assign.save_config(self.store, cfg)
        return cfg

    def admin(self, acct: Account) -> "AdminView":
        from .admin import AdminView

        auth.require_admin(acct)
        return AdminView(self.store, self)


def _check_assignment_id(value: Any) -> str:
    if not isinstance(value, str) or not _ASSIGNMENT_ID.match(value):
        raise BadRequest("assignment_id must be the 32-character id the server gave with the pair")
    return value


def _check_strength(value: Any, choice: str) -> float | None:
    if isinstance(value, bool) or not _hashable(value) or value not in STRENGTHS:
        raise BadRequest("strength must be empty, 'slightly' (1) or 'much' (2)")
    s = STRENGTHS[value]
    if s is not None and choice not in ("left", "right"):
        raise BadRequest("strength applies only when one response is better (left or right)")
    return s


def _hashable(v: Any) -> bool:
    try:
        hash(v)
        return True
    except TypeError:
        return False


def _check_rationale(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("rationale must be a text")
    if len(value) > MAX_RATIONALE_CHARS:
        raise BadRequest(f"rationale is {len(value):,} characters; at most {MAX_RATIONALE_CHARS:,} are allowed")
    if "\x00" in value:
        raise BadRequest("rationale must not contain NUL characters")
    value = value.strip()
    return value or None
