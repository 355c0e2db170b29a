"""Accounts for the annotation app: salted secret hashes (scrypt) and login sessions.

``create_account`` makes a random password, stores only its salted scrypt hash in the store's
``annotators.secret_hash`` and returns the password once. A login checks it (in constant time)
and issues a session token; the store keeps only the token's SHA-256 (the token is 256 random
bits, so a fast hash is enough) with an expiry, in the ``ui_sessions`` table defined here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .schema import ROLES, annotators

if TYPE_CHECKING:
    from .store import Store

# scrypt cost: n=2**14, r=8, p=1 (16 MiB, ~30-60 ms per check), as OWASP suggests for scrypt.
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_LEN = 2**14, 8, 1, 32
SESSION_SECONDS = 12 * 3600
MAX_SECRET_CHARS = 1024

metadata = sa.MetaData()
sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("annotator_id", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
sa.Index("ix_sessions_annotator", sessions.c.annotator_id)
_READY: "weakref.WeakSet[Any]" = weakref.WeakSet()


class AuthError(PermissionError):
    """Wrong credentials, an unknown or expired session, or a role that may not do this."""


@dataclass(frozen=True)
class Account:
    annotator_id: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash of ``secret``: ``scrypt$n$r$p$salt$hash``."""
    if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"a secret is a non-empty text of at most {MAX_SECRET_CHARS} characters")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=KEY_LEN, maxmem=256 * 1024 * 1024)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_secret(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` matches a hash from :func:`hash_secret` (constant-time comparison)."""
    if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_CHARS or not stored:
        return False
    try:
        algo, n, r, p, salt, key = stored.split("$")
        if algo != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        expected = _unb64(key)
        actual = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=n_, r=r_, p=p_, dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_secret(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def new_secret() -> str:
    """A random password (about 128 bits), readable and safe to paste."""
    return secrets.token_urlsafe(16)


def create_account(store: "Store", annotator_id: str, role: str = "annotator", *, name: str | None = None,
                   secret: str | None = None, reset: bool = False) -> str:
    """Create an account (or, with ``reset``, give an existing one a new password); returns the password.

    Only the salted hash is stored. An existing annotator without a password (e.g. one that came
    with imported labels) gets one; an existing account with a password needs ``reset=True``.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    secret = secret or new_secret()
    hashed = hash_secret(secret)
    existing = store.annotator(annotator_id)
    if existing is None:
        store.add_annotator(annotator_id, name=name, role=role, secret_hash=hashed)
        if store.annotator(annotator_id)["secret_hash"] != hashed:  # lost a race with another creator
            raise ValueError(f"annotator {annotator_id!r} already exists")
        return secret
    if existing.get("secret_hash") and not reset:
        raise ValueError(f"annotator {annotator_id!r} already has a password; use reset to issue a new one")
    fields = {"secret_hash": hashed, "role": role, "active": True}
    if name:
        fields["name"] = name
    store.set_annotator(annotator_id, **fields)
    return secret


def authenticate(store: "Store", annotator_id: str, secret: str) -> Account:
    """The account for these credentials; :class:`AuthError` otherwise (same message either way)."""
    row = store.annotator(annotator_id) if isinstance(annotator_id, str) and 0 < len(annotator_id) <= 200 else None
    if row is None or not row.get("secret_hash"):
        verify_secret(secret if isinstance(secret, str) and secret else "x", _dummy_hash())  # same cost as a real check
        raise AuthError("wrong name or password")
    if not verify_secret(secret, row["secret_hash"]) or not row.get("active", True):
        raise AuthError("wrong name or password")
    return Account(row["annotator_id"], row["name"], row["role"])


def account(store: "Store", annotator_id: str) -> Account:
    """The current account of an annotator (role read from the store on every call)."""
    row = store.annotator(annotator_id)
    if row is None or not row.get("active", True) or not row.get("secret_hash"):
        raise AuthError("this account does not exist or is disabled")
    return Account(row["annotator_id"], row["name"], row["role"])


def _ensure(store: "Store") -> None:
    if store not in _READY:
        metadata.create_all(store.engine)
        _READY.add(store)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_session(store: "Store", annotator_id: str, *, seconds: float = SESSION_SECONDS) -> str:
    """A new session token for an authenticated annotator (only its hash is stored)."""
    _ensure(store)
    token = secrets.token_urlsafe(32)
    now = time.time()
    with store.transaction() as conn:
        conn.execute(sessions.delete().where(sessions.c.expires_at < now))
        conn.execute(sessions.insert().values(token_hash=_token_hash(token), annotator_id=annotator_id, created_at=now, expires_at=now + seconds))
    return token


def session_account(store: "Store", token: str) -> Account:
    """The account behind a session token; :class:`AuthError` if unknown, expired or disabled."""
    if not isinstance(token, str) or not 20 <= len(token) <= 200:
        raise AuthError("not logged in")
    _ensure(store)
    with store.transaction(write=False) as conn:
        row = conn.execute(_SESSION_ACCOUNT, {"token_hash": _token_hash(token)}).first()
    if row is None or row[1] < time.time():
        raise AuthError("not logged in (unknown or expired session)")
    _, _, annotator_id, name, secret_hash, active, role = row
    if annotator_id is None or not active or not secret_hash:
        raise AuthError("this account does not exist or is disabled")
    return Account(annotator_id, name, role)


# One query per request: the session and its account (role and active flag read on every call).
_SESSION_ACCOUNT = (
    sa.select(sessions.c.annotator_id, sessions.c.expires_at, annotators.c.annotator_id, annotators.c.name,
              annotators.c.secret_hash, annotators.c.active, annotators.c.role)
    .select_from(sessions.outerjoin(annotators, annotators.c.annotator_id == sessions.c.annotator_id))
    .where(sessions.c.token_hash == sa.bindparam("token_hash"))
)


def end_session(store: "Store", token: str) -> None:
    _ensure(store)
    with store.transaction() as conn:
        conn.execute(sessions.delete().where(sessions.c.token_hash == _token_hash(token)))


def require_admin(acct: Account) -> Account:
    if acct.role != "admin":
        raise AuthError("this needs the admin role")
    return acct
