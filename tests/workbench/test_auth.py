"""Accounts: salted scrypt hashes, constant-time checks, sessions, roles."""

from __future__ import annotations

import hashlib
import time

import pytest

import workbench
from workbench import auth


@pytest.fixture
def store(tmp_path):
    s = workbench.open(tmp_path / "wb.db")
    yield s
    s.close()


def test_hash_is_salted_scrypt_and_verifies():
    h1, h2 = auth.hash_secret("hunter2"), auth.hash_secret("hunter2")
    assert h1 != h2 and h1.startswith("scrypt$16384$8$1$")
    assert "hunter2" not in h1
    assert auth.verify_secret("hunter2", h1) and auth.verify_secret("hunter2", h2)
    assert not auth.verify_secret("hunter3", h1)
    # independent reference: recompute with hashlib.scrypt from the stored salt
    _, n, r, p, salt, key = h1.split("$")
    ref = hashlib.scrypt(b"hunter2", salt=auth._unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    assert auth._b64(ref) == key


@pytest.mark.parametrize("stored", [None, "", "plain", "md5$x$y$z$a$b", "scrypt$x$8$1$AAAA$BBBB", "scrypt$16$8$1$!!$??"])
def test_malformed_hashes_never_verify(stored):
    assert not auth.verify_secret("anything", stored)


@pytest.mark.parametrize("secret", ["", None, "x" * 5000])
def test_bad_secrets_are_refused(secret):
    with pytest.raises(ValueError):
        auth.hash_secret(secret)
    assert not auth.verify_secret(secret, auth.hash_secret("ok"))


def test_accounts_store_only_the_hash(store):
    pw = auth.create_account(store, "alice", "admin")
    row = store.annotator("alice")
    assert row["role"] == "admin" and pw not in row["secret_hash"] and auth.verify_secret(pw, row["secret_hash"])
    assert auth.authenticate(store, "alice", pw) == auth.Account("alice", "alice", "admin")
    for name, secret in (("alice", "wrong"), ("bob", pw), ("", pw), ("x" * 300, pw)):
        with pytest.raises(auth.AuthError, match="wrong name or password"):
            auth.authenticate(store, name, secret)
    with pytest.raises(ValueError, match="already has a password"):
        auth.create_account(store, "alice", "admin")
    pw2 = auth.create_account(store, "alice", "annotator", reset=True)
    with pytest.raises(auth.AuthError):
        auth.authenticate(store, "alice", pw)
    assert auth.authenticate(store, "alice", pw2).role == "annotator"
    with pytest.raises(ValueError, match="role"):
        auth.create_account(store, "carol", "root")
    assert store.annotator("carol") is None


def test_an_imported_annotator_can_be_given_a_password(store):
    store.add_annotator("importer-7")
    with pytest.raises(auth.AuthError):
        auth.authenticate(store, "importer-7", "")
    pw = auth.create_account(store, "importer-7")
    assert auth.authenticate(store, "importer-7", pw).role == "annotator"


def test_sessions_hash_tokens_expire_and_follow_role_changes(store):
    auth.create_account(store, "ann", "annotator")
    token = auth.issue_session(store, "ann")
    assert auth.session_account(store, token).role == "annotator"
    with store._read() as conn:
        stored = [r[0] for r in conn.execute(auth.sessions.select().with_only_columns(auth.sessions.c.token_hash))]
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored
    store.set_annotator("ann", role="admin")
    assert auth.session_account(store, token).is_admin  # the role is read on every call
    store.set_annotator("ann", active=False)
    with pytest.raises(auth.AuthError):
        auth.session_account(store, token)
    store.set_annotator("ann", active=True)
    auth.end_session(store, token)
    with pytest.raises(auth.AuthError):
        auth.session_account(store, token)
    short = auth.issue_session(store, "ann", seconds=0.01)
    time.sleep(0.05)
    with pytest.raises(auth.AuthError, match="expired"):
        auth.session_account(store, short)
    for bad in ("", "short", "x" * 1000, None):
        with pytest.raises(auth.AuthError):
            auth.session_account(store, bad)


def test_require_admin():
    with pytest.raises(auth.AuthError, match="admin"):
        auth.require_admin(auth.Account("a", "a", "annotator"))
    assert auth.require_admin(auth.Account("b", "b", "admin")).role == "admin"
