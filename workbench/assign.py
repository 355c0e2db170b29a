"""Which pair an annotator sees next: a pool of pairs, strategies, and leases (UI-independent).

The pool (``annotation_pairs``) holds the pairs of responses to one prompt that annotators will
compare. :func:`assign_next_pair` gives an annotator their next pair as a *lease*: a row in
``annotation_assignments`` that holds the pair for ``lease_seconds``, records which response is
shown on the left, and names the client token its label will carry (``"ui:" + assignment_id``),
so a resubmitted label is recorded once. Leases are taken inside one write transaction, so two
annotators are never given the same single-overlap pair; a lease that expires goes back to the
pool.

Strategies (:data:`STRATEGIES`):

* ``random``: any eligible pair, uniformly at random;
* ``balanced``: least-labelled pairs first (labels already in the store count), ties at random;
* ``overlap``: fill pairs that already have labels first, so each pair reaches ``overlap``
  different annotators quickly (for agreement statistics);
* ``active``: the pair whose fitted model is least sure: ``scorer(candidates)`` returns
  P(A>B) per row (the pair nearest 1/2 wins) or an ``(n, m)`` array of ensemble members' P(A>B)
  (the largest standard deviation wins). The scorer is a plain callable, so this module imports
  nothing of ``rm``.

Every strategy respects ``overlap`` (a pair goes to at most ``overlap`` different annotators and
never twice to the same one) and mixes in gold pairs (known answers, scored per annotator) at
``gold_rate`` and repeats of the annotator's own earlier pairs with the sides swapped at
``repeat_rate`` (self-consistency).

The two tables live on this module's own metadata (created on first use); they belong in
``workbench.schema`` eventually.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
import weakref
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import polars as pl
import sqlalchemy as sa

from .schema import LABELS
from .schema import settings as settings_table

if TYPE_CHECKING:
    from .store import Store

STRATEGIES = ("random", "balanced", "overlap", "active")
KINDS = ("pair", "gold", "repeat")
STATUSES = ("leased", "labelled", "skipped", "expired", "released", "undone")
TOKEN_PREFIX = "ui:"
SETTINGS_KEY = "assign.config"

metadata = sa.MetaData()

pairs = sa.Table(
    "annotation_pairs",
    metadata,
    sa.Column("pair_id", sa.String(32), primary_key=True),
    sa.Column("prompt_id", sa.String(32), nullable=False),
    sa.Column("response_a_id", sa.String(32), nullable=False),
    sa.Column("response_b_id", sa.String(32), nullable=False),
    sa.Column("gold_label", sa.String(8)),  # a known answer makes this a gold pair
    sa.Column("active", sa.Boolean, nullable=False, server_default="1"),
    sa.Column("sort_key", sa.Integer, nullable=False),  # a fixed random order for ties
    sa.Column("n_prior", sa.Integer, nullable=False, server_default="0"),  # labels in the store before the pool
    sa.Column("n_labels", sa.Integer, nullable=False, server_default="0"),  # labels given through leases
    sa.Column("n_taken", sa.Integer, nullable=False, server_default="0"),  # live leases + labels
    sa.Column("coverage", sa.Integer, nullable=False, server_default="0"),  # n_prior + n_labels (indexed order)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.CheckConstraint("gold_label is null or gold_label in ('a', 'b', 'tie', 'both_bad')", name="ck_pair_gold"),
)
# one index per strategy's order, so picking a pair walks an index instead of sorting the pool
sa.Index("ix_pairs_pool", pairs.c.active, pairs.c.coverage, pairs.c.n_taken, pairs.c.sort_key)  # balanced
_LATER_INDEXES = (
    sa.Index("ix_pairs_overlap", pairs.c.active, pairs.c.n_taken.desc(), pairs.c.sort_key),  # overlap
    sa.Index("ix_pairs_order", pairs.c.active, pairs.c.sort_key),  # random
)
sa.Index("ix_pairs_responses", pairs.c.response_a_id, pairs.c.response_b_id)

assignments = sa.Table(
    "annotation_assignments",
    metadata,
    sa.Column("assignment_id", sa.String(40), primary_key=True),
    sa.Column("pair_id", sa.String(32), nullable=False),
    sa.Column("annotator_id", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # pair | gold | repeat
    sa.Column("shown_left", sa.String(1), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("repeat_of", sa.String(40)),  # the assignment a repeat repeats
    sa.Column("leased_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("label", sa.String(8)),  # in a/b orientation, as stored
    sa.Column("comparison_id", sa.String(32)),
    sa.Column("seq", sa.Integer, nullable=False),  # order of leases per annotator
    sa.CheckConstraint("shown_left in ('a', 'b')", name="ck_assign_shown_left"),
    sa.CheckConstraint("kind in ('pair', 'gold', 'repeat')", name="ck_assign_kind"),
)
sa.Index("ix_assign_annotator_pair", assignments.c.annotator_id, assignments.c.pair_id)
sa.Index("ix_assign_annotator_status", assignments.c.annotator_id, assignments.c.status, assignments.c.seq)
sa.Index("ix_assign_status_expiry", assignments.c.status, assignments.c.expires_at)
sa.Index("ix_assign_comparison", assignments.c.comparison_id)

_READY: "weakref.WeakSet[Any]" = weakref.WeakSet()
_WRITER_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_WRITER_LOCKS_GUARD = threading.Lock()


class AssignmentError(ValueError):
    """A request about an assignment that cannot be honoured (unknown, not yours, undone...)."""


@dataclass
class AssignConfig:
    """How pairs are handed out (stored in the store's settings; the admin view edits it)."""

    strategy: str = "balanced"
    overlap: int = 1
    gold_rate: float = 0.0
    repeat_rate: float = 0.0
    lease_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not 1 <= self.overlap <= 100:
            raise ValueError(f"overlap must be an integer from 1 to 100, got {self.overlap!r}")
        for name in ("gold_rate", "repeat_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be a number from 0 to 1, got {v!r}")
        if isinstance(self.lease_seconds, bool) or not isinstance(self.lease_seconds, (int, float)) or not 1 <= float(self.lease_seconds) <= 7 * 86400:
            raise ValueError(f"lease_seconds must be from 1 to 604800, got {self.lease_seconds!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "AssignConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown assignment settings: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def load_config(store: "Store") -> AssignConfig:
    return AssignConfig.from_dict(store.get_setting(SETTINGS_KEY))


def save_config(store: "Store", config: AssignConfig) -> None:
    store.set_setting(SETTINGS_KEY, config.to_dict())


@dataclass(frozen=True)
class Assignment:
    """One leased pair: what an annotator is shown, and the token their label will carry."""

    assignment_id: str
    pair_id: str
    annotator_id: str
    kind: str
    shown_left: str
    status: str
    prompt_id: str
    response_a_id: str
    response_b_id: str
    leased_at: float
    expires_at: float
    label: str | None = None
    comparison_id: str | None = None
    gold_label: str | None = field(default=None, repr=False)

    @property
    def client_token(self) -> str:
        return TOKEN_PREFIX + self.assignment_id


# ---------------------------------------------------------------------------- plumbing
def ensure_tables(store: "Store") -> None:
    """Create the pool and lease tables if absent (idempotent, cheap after the first call)."""
    if store in _READY:
        return
    metadata.create_all(store.engine)
    for index in _LATER_INDEXES:  # added after the tables first shipped: create_all skips existing tables
        index.create(store.engine, checkfirst=True)
    _READY.add(store)


def writer_lock(store: "Store") -> Any:
    """This process's lock around write transactions on ``store``.

    SQLite lets one writer in at a time; a thread that finds the file locked sleeps in SQLite's
    busy handler (1, 2, 5, 10 ... 100 ms steps), which under many server threads turns into
    second-long tails. Queuing this process's writers on a lock first means they wait only as
    long as the writer ahead of them; other processes still queue through the file lock.
    """
    lock = _WRITER_LOCKS.get(store)
    if lock is None:
        with _WRITER_LOCKS_GUARD:
            lock = _WRITER_LOCKS.setdefault(store, threading.RLock())
    return lock


@contextlib.contextmanager
def _write(store: "Store") -> Iterator[sa.Connection]:
    """One serialized write transaction (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL)."""
    ensure_tables(store)
    with writer_lock(store), store.transaction() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7265347)"))
        yield conn


@contextlib.contextmanager
def _read(store: "Store") -> Iterator[sa.Connection]:
    ensure_tables(store)
    with store.transaction(write=False) as conn:
        yield conn


def pair_id_of(prompt_id: str, response_a_id: str, response_b_id: str) -> str:
    lo, hi = sorted((response_a_id, response_b_id))
    return hashlib.sha256(f"pair\x1f{prompt_id}\x1f{lo}\x1f{hi}".encode()).hexdigest()[:32]


def _sort_key(pair_id: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()[:7], 16)


# ---------------------------------------------------------------------------- the pool
def add_pairs(store: "Store", frame: pl.DataFrame, *, seed: int = 0) -> int:
    """Add pairs to the pool; returns how many were new.

    ``frame`` has ``prompt_id, response_a_id, response_b_id`` and optionally ``gold_label``.
    A pair already in the pool (either orientation) is left as it is. Labels the store already
    holds for a pair count as its prior coverage (for the balanced strategy).
    """
    missing = {"prompt_id", "response_a_id", "response_b_id"} - set(frame.columns)
    if missing:
        raise ValueError(f"pairs need columns {sorted(missing)}")
    if frame.height == 0:
        return 0
    if "gold_label" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("gold_label"))
    bad = frame.filter(pl.col("gold_label").is_not_null() & ~pl.col("gold_label").is_in(list(LABELS)))
    if bad.height:
        raise ValueError(f"gold_label must be one of {', '.join(LABELS)}, got {bad['gold_label'][0]!r}")
    same = frame.filter(pl.col("response_a_id") == pl.col("response_b_id"))
    if same.height:
        raise ValueError(f"a pair needs two different responses (response {same['response_a_id'][0]} twice)")
    ensure_tables(store)
    responses = store.responses().select("response_id", "prompt_id")
    known = dict(zip(responses["response_id"].to_list(), responses["prompt_id"].to_list()))
    for row in frame.select("prompt_id", "response_a_id", "response_b_id").iter_rows():
        for rid in row[1:]:
            if known.get(rid) != row[0]:
                raise ValueError(f"response {rid!r} is not a response to prompt {row[0]!r}")
    prior = _prior_counts(store)
    now = time.time()
    rows, seen = [], set()
    for r in frame.iter_rows(named=True):
        pid = pair_id_of(r["prompt_id"], r["response_a_id"], r["response_b_id"])
        if pid in seen:
            continue
        seen.add(pid)
        rows.append(dict(
            pair_id=pid, prompt_id=r["prompt_id"], response_a_id=r["response_a_id"], response_b_id=r["response_b_id"],
            gold_label=r["gold_label"], active=True, sort_key=_sort_key(pid, seed), n_prior=prior.get(pid, 0),
            n_labels=0, n_taken=0, coverage=prior.get(pid, 0), created_at=now,
        ))
    with _write(store) as conn:
        existing = set()
        ids = [r["pair_id"] for r in rows]
        for i in range(0, len(ids), 500):
            existing |= {x for (x,) in conn.execute(sa.select(pairs.c.pair_id).where(pairs.c.pair_id.in_(ids[i:i + 500])))}
        new = [r for r in rows if r["pair_id"] not in existing]
        for i in range(0, len(new), 500):
            conn.execute(pairs.insert(), new[i:i + 500])
    return len(new)


def _prior_counts(store: "Store") -> dict[str, int]:
    """Live labels per pair already in the store (latest event per comparison is a label)."""
    from .schema import label_events as e

    latest = sa.select(sa.func.max(e.c.event_id).label("m")).group_by(e.c.comparison_id).subquery()
    with _read(store) as conn:
        rows = conn.execute(
            sa.select(e.c.prompt_id, e.c.response_a_id, e.c.response_b_id)
            .join(latest, latest.c.m == e.c.event_id).where(e.c.kind == "label")
        ).all()
    out: dict[str, int] = {}
    for p, a, b in rows:
        k = pair_id_of(p, a, b)
        out[k] = out.get(k, 0) + 1
    return out


def build_pairs(store: "Store", *, prompt_ids: Sequence[str] | None = None, max_pairs_per_prompt: int | None = None, seed: int = 0) -> int:
    """Put every pair of responses to each prompt in the pool (or a random ``max_pairs_per_prompt``)."""
    responses = store.responses().select("response_id", "prompt_id").sort("prompt_id", "response_id")
    if prompt_ids is not None:
        responses = responses.filter(pl.col("prompt_id").is_in(list(prompt_ids)))
    rng = random.Random(seed)
    rows = []
    for (prompt_id,), group in responses.group_by(["prompt_id"], maintain_order=True):
        rids = group["response_id"].to_list()
        combos = [(rids[i], rids[j]) for i in range(len(rids)) for j in range(i + 1, len(rids))]
        if max_pairs_per_prompt is not None and len(combos) > max_pairs_per_prompt:
            combos = rng.sample(combos, max_pairs_per_prompt)
        rows += [(prompt_id, a, b) for a, b in combos]
    if not rows:
        return 0
    return add_pairs(store, pl.DataFrame(rows, schema=["prompt_id", "response_a_id", "response_b_id"], orient="row"), seed=seed)


def set_gold(store: "Store", pair_id: str, gold_label: str | None) -> None:
    """Make a pair a gold pair with a known answer (in its a/b orientation), or clear it."""
    if gold_label is not None and gold_label not in LABELS:
        raise ValueError(f"gold_label must be one of {', '.join(LABELS)}, got {gold_label!r}")
    with _write(store) as conn:
        n = conn.execute(pairs.update().where(pairs.c.pair_id == pair_id).values(gold_label=gold_label)).rowcount
    if not n:
        raise AssignmentError(f"unknown pair {pair_id!r}")


def set_active(store: "Store", pair_ids: Sequence[str], active: bool) -> None:
    """Take pairs out of the pool (or put them back) without touching their history."""
    with _write(store) as conn:
        conn.execute(pairs.update().where(pairs.c.pair_id.in_(list(pair_ids))).values(active=bool(active)))


def pool(store: "Store") -> pl.DataFrame:
    """The pool as a frame: one row per pair with its coverage counters."""
    with _read(store) as conn:
        result = conn.execute(sa.select(pairs).order_by(pairs.c.sort_key))
        rows = result.fetchall()
        cols = list(result.keys())
    return pl.DataFrame([tuple(r) for r in rows], schema=cols, orient="row") if rows else pl.DataFrame(schema={c: pl.Utf8 for c in cols})


# ---------------------------------------------------------------------------- leases
def expire_leases(store_or_conn: Any, now: float | None = None) -> int:
    """Return expired leases to the pool; returns how many expired."""
    now = time.time() if now is None else now
    if isinstance(store_or_conn, sa.Connection):
        return _expire(store_or_conn, now)
    with _write(store_or_conn) as conn:
        return _expire(conn, now)


_EXPIRED = sa.select(assignments.c.assignment_id, assignments.c.pair_id).where(
    assignments.c.status == "leased", assignments.c.expires_at < sa.bindparam("now"))


def _expire(conn: sa.Connection, now: float) -> int:
    rows = conn.execute(_EXPIRED, {"now": now}).all()
    if not rows:
        return 0
    ids = [r[0] for r in rows]
    conn.execute(assignments.update().where(assignments.c.assignment_id.in_(ids)).values(status="expired", finished_at=now))
    _bump(conn, [r[1] for r in rows], taken=-1)
    return len(rows)


_BUMP = pairs.update().where(pairs.c.pair_id == sa.bindparam("p")).values(
    n_taken=pairs.c.n_taken + sa.bindparam("dt"), n_labels=pairs.c.n_labels + sa.bindparam("dl"),
    coverage=pairs.c.coverage + sa.bindparam("dl"))


def _bump(conn: sa.Connection, pair_ids: Sequence[str], *, taken: int = 0, labels: int = 0) -> None:
    counts: dict[str, int] = {}
    for p in pair_ids:
        counts[p] = counts.get(p, 0) + 1
    for p, n in counts.items():
        conn.execute(_BUMP, {"p": p, "dt": taken * n, "dl": labels * n})


def _as_generator(rng: Any) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)


_ASSIGNMENT_COLS = [
    assignments.c.assignment_id, assignments.c.pair_id, assignments.c.annotator_id, assignments.c.kind,
    assignments.c.shown_left, assignments.c.status, pairs.c.prompt_id, pairs.c.response_a_id,
    pairs.c.response_b_id, assignments.c.leased_at, assignments.c.expires_at, assignments.c.label,
    assignments.c.comparison_id, pairs.c.gold_label,
]


_LOAD = (sa.select(*_ASSIGNMENT_COLS).join(pairs, pairs.c.pair_id == assignments.c.pair_id)
         .where(assignments.c.assignment_id == sa.bindparam("aid")))
_CURRENT = (
    sa.select(*_ASSIGNMENT_COLS).join(pairs, pairs.c.pair_id == assignments.c.pair_id)
    .where(assignments.c.annotator_id == sa.bindparam("who"), assignments.c.status == "leased",
           assignments.c.expires_at >= sa.bindparam("now"))
    .order_by(assignments.c.seq.desc()).limit(1)
)
_NEXT_SEQ = sa.select(sa.func.max(assignments.c.seq)).where(assignments.c.annotator_id == sa.bindparam("who"))


def _load(conn: sa.Connection, assignment_id: str) -> Assignment | None:
    row = conn.execute(_LOAD, {"aid": assignment_id}).first()
    return Assignment(*row) if row else None


def get_assignment(store: "Store", assignment_id: str) -> Assignment | None:
    with _read(store) as conn:
        return _load(conn, assignment_id)


def current_lease(store: "Store", annotator_id: str, now: float | None = None) -> Assignment | None:
    """The annotator's live lease, if any (what a page reload shows again)."""
    now = time.time() if now is None else now
    with _read(store) as conn:
        return _current(conn, annotator_id, now)


def _current(conn: sa.Connection, annotator_id: str, now: float) -> Assignment | None:
    row = conn.execute(_CURRENT, {"who": annotator_id, "now": now}).first()
    return Assignment(*row) if row else None


def _next_seq(conn: sa.Connection, annotator_id: str) -> int:
    n = conn.execute(_NEXT_SEQ, {"who": annotator_id}).scalar()
    return int(n or 0) + 1


_INSERT_ASSIGNMENT = assignments.insert()


def _lease(conn: sa.Connection, annotator_id: str, pair_id: str, kind: str, shown_left: str, now: float, lease_seconds: float, repeat_of: str | None = None) -> str:
    assignment_id = uuid.uuid4().hex
    conn.execute(_INSERT_ASSIGNMENT, dict(
        assignment_id=assignment_id, pair_id=pair_id, annotator_id=annotator_id, kind=kind, shown_left=shown_left,
        status="leased", repeat_of=repeat_of, leased_at=now, expires_at=now + float(lease_seconds),
        finished_at=None, label=None, comparison_id=None, seq=_next_seq(conn, annotator_id),
    ))
    if kind != "repeat":
        _bump(conn, [pair_id], taken=1)
    return assignment_id


def assign_next_pair(
    store: "Store",
    annotator_id: str,
    strategy: str | None = None,
    *,
    overlap: int | None = None,
    gold_rate: float | None = None,
    repeat_rate: float | None = None,
    lease_seconds: float | None = None,
    scorer: Callable[[pl.DataFrame], Any] | None = None,
    fallback_strategy: str | None = None,
    rng: Any = None,
    now: float | None = None,
    max_candidates: int = 2000,
) -> Assignment | None:
    """Lease the annotator's next pair (or return their live lease); ``None`` when nothing is left.

    Arguments left as ``None`` come from the store's saved :class:`AssignConfig` (read inside the
    lease's own transaction). ``rng`` is a ``random.Random`` or a seed (the left/right side, the
    gold/repeat draws and random picks). ``fallback_strategy`` is used instead of ``active`` when
    no ``scorer`` is given (otherwise that is an error).
    """
    overrides = dict(strategy=strategy, overlap=overlap, gold_rate=gold_rate, repeat_rate=repeat_rate, lease_seconds=lease_seconds)
    gen = _as_generator(rng)
    now = time.time() if now is None else now
    with _write(store) as conn:
        return _assign_in(conn, store, annotator_id, overrides, scorer, fallback_strategy, gen, now, max_candidates)


_CONFIG = sa.select(settings_table.c.value).where(settings_table.c.key == sa.bindparam("key"))


def _config_in(conn: sa.Connection, overrides: dict[str, Any]) -> AssignConfig:
    import json

    raw = conn.execute(_CONFIG, {"key": SETTINGS_KEY}).scalar()
    saved = dict(json.loads(raw)) if raw else {}
    saved.update({k: v for k, v in overrides.items() if v is not None})
    return AssignConfig.from_dict(saved)


def _assign_in(conn: sa.Connection, store: "Store", annotator_id: str, overrides: dict[str, Any], scorer: Any,
               fallback_strategy: str | None, gen: random.Random, now: float, max_candidates: int) -> Assignment | None:
    cfg = _config_in(conn, overrides)
    if cfg.strategy == "active" and scorer is None:
        if fallback_strategy is None:
            raise ValueError("the active strategy needs a scorer: a callable from candidate pairs to P(A>B)")
        cfg.strategy = fallback_strategy
        AssignConfig.from_dict(cfg.to_dict())  # validate the fallback
    _expire(conn, now)
    live = _current(conn, annotator_id, now)
    if live is not None:
        return live
    picked: tuple[str, str, str | None, str | None] | None = None  # pair_id, kind, repeat_of, shown_left
    if cfg.gold_rate and gen.random() < cfg.gold_rate:
        picked = _pick_gold(conn, annotator_id, gen)
    if picked is None and cfg.repeat_rate and gen.random() < cfg.repeat_rate:
        picked = _pick_repeat(conn, annotator_id, gen)
    if picked is None:
        pair_id = _pick_pair(conn, store, annotator_id, cfg, scorer, gen, max_candidates)
        if pair_id is None:
            picked = _pick_gold(conn, annotator_id, gen) if cfg.gold_rate else None
        else:
            picked = (pair_id, "pair", None, None)
    if picked is None:
        return None
    pair_id, kind, repeat_of, side = picked
    shown_left = side or gen.choice("ab")
    assignment_id = _lease(conn, annotator_id, pair_id, kind, shown_left, now, cfg.lease_seconds, repeat_of)
    return _load(conn, assignment_id)


def _not_seen_by(annotator_id: Any) -> Any:
    mine = sa.select(assignments.c.pair_id).where(
        assignments.c.annotator_id == annotator_id,
        assignments.c.pair_id == pairs.c.pair_id,
        assignments.c.status.notin_(("expired", "released")),
    )
    return ~sa.exists(mine)


# The pool's candidates for one annotator, built once (bound: who, overlap). Each strategy's
# order matches an index, so a pick walks the index from its start and stops at the first
# eligible pair instead of scanning and sorting the pool.
# (``n_taken + 0``: an expression, not the column, so that once ANALYZE has run SQLite does not
# skip-scan ix_pairs_pool on the n_taken range and sort what it finds, instead of walking it.)
_ELIGIBLE = sa.select(pairs.c.pair_id).where(
    pairs.c.active.is_(True), pairs.c.gold_label.is_(None), (pairs.c.n_taken + 0) < sa.bindparam("overlap"),
    _not_seen_by(sa.bindparam("who")),
)
_PICK_BALANCED = _ELIGIBLE.order_by(pairs.c.coverage, pairs.c.n_taken, pairs.c.sort_key).limit(1)
_PICK_OVERLAP = _ELIGIBLE.order_by(pairs.c.n_taken.desc(), pairs.c.sort_key).limit(1)
_PICK_RANDOM_FROM = _ELIGIBLE.where(pairs.c.sort_key >= sa.bindparam("start")).order_by(pairs.c.sort_key).limit(1)
_SORT_KEY_RANGE = 16**7  # _sort_key takes 7 hex digits


def _pick_pair(conn: sa.Connection, store: "Store", annotator_id: str, cfg: AssignConfig, scorer: Any, gen: random.Random, max_candidates: int) -> str | None:
    params = {"who": annotator_id, "overlap": cfg.overlap}
    if cfg.strategy == "random":
        # a uniformly random point on the pool's fixed random order, then the first eligible pair
        # from there (wrapping around): one index walk instead of counting the pool
        start = gen.randrange(_SORT_KEY_RANGE)
        got = conn.execute(_PICK_RANDOM_FROM, {**params, "start": start}).scalar()
        return got if got is not None else conn.execute(_PICK_RANDOM_FROM, {**params, "start": 0}).scalar()
    if cfg.strategy == "balanced":
        # least-covered first, then least held, then the pool's fixed random order (walks the index)
        return conn.execute(_PICK_BALANCED, params).scalar()
    if cfg.strategy == "overlap":
        # pairs that other annotators already hold or labelled first, to complete overlap sets
        return conn.execute(_PICK_OVERLAP, params).scalar()
    # active
    cands = conn.execute(
        sa.select(pairs.c.pair_id, pairs.c.prompt_id, pairs.c.response_a_id, pairs.c.response_b_id)
        .where(pairs.c.pair_id.in_(_ELIGIBLE.order_by(pairs.c.coverage, pairs.c.sort_key).limit(max_candidates).scalar_subquery())),
        params,
    ).all()
    if not cands:
        return None
    frame = pl.DataFrame([tuple(c) for c in cands], schema=["pair_id", "prompt_id", "response_a_id", "response_b_id"], orient="row")
    frame = _with_models(conn, frame)
    priority = uncertainty(scorer(frame), frame.height)
    best = float(np.nanmax(priority)) if np.isfinite(priority).any() else None
    if best is None:
        return frame["pair_id"][gen.randrange(frame.height)]
    ties = np.flatnonzero(priority >= best - 1e-12)
    return frame["pair_id"][int(ties[gen.randrange(len(ties))])]


def _with_models(conn: sa.Connection, frame: pl.DataFrame) -> pl.DataFrame:
    from .schema import responses

    ids = list(set(frame["response_a_id"].to_list()) | set(frame["response_b_id"].to_list()))
    models: dict[str, str | None] = {}
    for i in range(0, len(ids), 500):
        models.update(dict(conn.execute(sa.select(responses.c.response_id, responses.c.model).where(responses.c.response_id.in_(ids[i:i + 500]))).all()))
    return frame.with_columns(
        pl.col("response_a_id").replace_strict(models, default=None, return_dtype=pl.String).alias("model_a"),
        pl.col("response_b_id").replace_strict(models, default=None, return_dtype=pl.String).alias("model_b"),
    )


def uncertainty(scores: Any, n: int) -> np.ndarray:
    """Priority of each candidate for the active strategy (larger = less sure).

    ``scores`` of shape ``(n,)`` are P(A>B): priority ``-|p - 1/2|``. Shape ``(n, m)`` are ``m``
    ensemble members' P(A>B): priority is their standard deviation (disagreement).
    """
    arr = np.asarray(scores, dtype=float)
    if arr.ndim == 1 and arr.shape[0] == n:
        if np.any((arr < 0) | (arr > 1)):
            raise ValueError("a scorer returns probabilities P(A>B) in [0, 1]")
        return -np.abs(arr - 0.5)
    if arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] >= 2:
        return arr.std(axis=1)
    raise ValueError(f"a scorer returns shape ({n},) or ({n}, m>=2), got {arr.shape}")


def item_score_scorer(scores: dict[str, float] | pl.DataFrame, item: str = "model") -> Callable[[pl.DataFrame], np.ndarray]:
    """A scorer from item-level strengths (e.g. a Bradley-Terry fit's ``scores_``): P(A>B) = sigmoid(s_a - s_b).

    ``scores`` is ``{item: score}`` or a frame with ``item`` and ``score`` columns; unknown items
    score 0. ``item`` names which pair column the items are (``model`` -> model_a/model_b).
    """
    if isinstance(scores, pl.DataFrame):
        scores = dict(zip(scores["item"].cast(pl.String).to_list(), scores["score"].to_list()))
    table = {str(k): float(v) for k, v in scores.items()}

    def score(frame: pl.DataFrame) -> np.ndarray:
        sa_ = np.array([table.get(x, 0.0) if x is not None else 0.0 for x in frame[f"{item}_a"].to_list()])
        sb_ = np.array([table.get(x, 0.0) if x is not None else 0.0 for x in frame[f"{item}_b"].to_list()])
        return 1.0 / (1.0 + np.exp(-(sa_ - sb_)))

    return score


def _pick_gold(conn: sa.Connection, annotator_id: str, gen: random.Random) -> tuple[str, str, None, None] | None:
    rows = conn.execute(
        sa.select(pairs.c.pair_id).where(pairs.c.active.is_(True), pairs.c.gold_label.is_not(None), _not_seen_by(annotator_id))
    ).scalars().all()
    if not rows:
        return None
    return (rows[gen.randrange(len(rows))], "gold", None, None)


def _pick_repeat(conn: sa.Connection, annotator_id: str, gen: random.Random) -> tuple[str, str, str, str] | None:
    repeated = sa.select(assignments.c.repeat_of).where(
        assignments.c.annotator_id == annotator_id, assignments.c.kind == "repeat", assignments.c.repeat_of.is_not(None),
        assignments.c.status.notin_(("expired", "released")),
    )
    rows = conn.execute(
        sa.select(assignments.c.assignment_id, assignments.c.pair_id, assignments.c.shown_left).where(
            assignments.c.annotator_id == annotator_id, assignments.c.kind == "pair", assignments.c.status == "labelled",
            assignments.c.assignment_id.notin_(repeated),
        )
    ).all()
    if not rows:
        return None
    aid, pid, side = rows[gen.randrange(len(rows))]
    return (pid, "repeat", aid, "b" if side == "a" else "a")


# ---------------------------------------------------------------------------- outcomes
def display_to_label(choice: str, shown_left: str) -> str:
    """Map what the annotator clicked (left/right/tie/both_bad) to the stored a/b label."""
    if choice in ("tie", "both_bad"):
        return choice
    if choice not in ("left", "right"):
        raise ValueError(f"choice must be one of left, right, tie, both_bad; got {choice!r}")
    if shown_left not in ("a", "b"):
        raise ValueError(f"shown_left must be 'a' or 'b', got {shown_left!r}")
    right = "b" if shown_left == "a" else "a"
    return shown_left if choice == "left" else right


def record_label(store: "Store", assignment_id: str, annotator_id: str, choice: str, *, strength: float | None = None,
                 rationale: str | None = None, now: float | None = None) -> tuple[Assignment, Any]:
    """Record the label for a leased assignment; idempotent (a resubmission records nothing new).

    The label is committed to the store (carrying the assignment's client token) before the lease
    is marked labelled, so an acknowledged label survives a crash at any point; a resubmission or
    :func:`reconcile` finishes the bookkeeping. Returns the assignment and the store's receipt.
    """
    now = time.time() if now is None else now
    a, label, receipt = _add_label(store, assignment_id, annotator_id, choice, strength, rationale, now)
    with _write(store) as conn:
        _mark_labelled_in(conn, a, label, receipt.comparison_id, now)
    return a, receipt


def record_label_and_next(
    store: "Store", assignment_id: str, annotator_id: str, choice: str, *, strength: float | None = None,
    rationale: str | None = None, scorer: Callable[[pl.DataFrame], Any] | None = None,
    fallback_strategy: str | None = None, rng: Any = None, now: float | None = None, max_candidates: int = 2000,
) -> tuple[Assignment, Any, Assignment | None]:
    """:func:`record_label`, then :func:`assign_next_pair` with the saved config, in two transactions.

    The label is committed first (as in :func:`record_label`); marking the lease labelled and
    leasing the next pair share the second transaction. Returns the labelled assignment, the
    store's receipt and the next lease (``None`` when the annotator's queue is empty).
    """
    now = time.time() if now is None else now
    a, label, receipt = _add_label(store, assignment_id, annotator_id, choice, strength, rationale, now)
    with _write(store) as conn:
        _mark_labelled_in(conn, a, label, receipt.comparison_id, now)
        nxt = _assign_in(conn, store, annotator_id, {}, scorer, fallback_strategy, _as_generator(rng), now, max_candidates)
    return a, receipt, nxt


def _add_label(store: "Store", assignment_id: str, annotator_id: str, choice: str, strength: float | None,
               rationale: str | None, now: float) -> tuple[Assignment, str, Any]:
    a = get_assignment(store, assignment_id)
    if a is None or a.annotator_id != annotator_id:
        raise AssignmentError(f"unknown assignment {assignment_id!r} for annotator {annotator_id!r}")
    if a.status == "undone":
        raise AssignmentError("this assignment's label was undone; label the pair again from its new assignment")
    label = display_to_label(choice, a.shown_left)
    if a.status == "labelled" and a.label != label:
        raise AssignmentError(f"this assignment is already labelled ({a.label}); undo it to change the label")
    duration_ms = int(max(0.0, min(now - a.leased_at, 86400.0)) * 1000)
    with writer_lock(store):
        receipt = store.add_label(
            a.prompt_id, a.response_a_id, a.response_b_id, label, annotator_id, strength=strength,
            shown_left=a.shown_left, source="human", rationale=rationale or None, duration_ms=duration_ms,
            client_token=a.client_token,
        )
    return a, label, receipt


_STATUS = sa.select(assignments.c.status).where(assignments.c.assignment_id == sa.bindparam("aid"))
_MARK_LABELLED = assignments.update().where(assignments.c.assignment_id == sa.bindparam("aid")).values(
    status="labelled", label=sa.bindparam("label"), comparison_id=sa.bindparam("cid"), finished_at=sa.bindparam("now"))


def _mark_labelled(store: "Store", a: Assignment, label: str, comparison_id: str, now: float) -> None:
    with _write(store) as conn:
        _mark_labelled_in(conn, a, label, comparison_id, now)


def _mark_labelled_in(conn: sa.Connection, a: Assignment, label: str, comparison_id: str, now: float) -> None:
    prev = conn.execute(_STATUS, {"aid": a.assignment_id}).scalar()
    if prev in ("labelled", "undone"):
        return
    conn.execute(_MARK_LABELLED, {"aid": a.assignment_id, "label": label, "cid": comparison_id, "now": now})
    if a.kind != "repeat":
        _bump(conn, [a.pair_id], taken=0 if prev == "leased" else 1, labels=1)


def skip(store: "Store", assignment_id: str, annotator_id: str, now: float | None = None) -> bool:
    """Give a leased pair back (never offered to this annotator again); False if it was not leased."""
    now = time.time() if now is None else now
    with _write(store) as conn:
        a = _load(conn, assignment_id)
        if a is None or a.annotator_id != annotator_id:
            raise AssignmentError(f"unknown assignment {assignment_id!r} for annotator {annotator_id!r}")
        if a.status != "leased":
            return False
        conn.execute(assignments.update().where(assignments.c.assignment_id == assignment_id).values(status="skipped", finished_at=now))
        if a.kind != "repeat":
            _bump(conn, [a.pair_id], taken=-1)
    return True


def undo_last(store: "Store", annotator_id: str, *, client_token: str, lease_seconds: float | None = None, now: float | None = None) -> tuple[Any, Assignment | None]:
    """Retract the annotator's last live label (a superseding event) and lease that pair again.

    Returns the store's receipt (``None`` when there is nothing to undo) and the new lease of the
    undone pair (shown on the same side), which replaces the annotator's current lease. A resent
    undo (same ``client_token``) changes nothing.
    """
    now = time.time() if now is None else now
    with writer_lock(store):
        receipt = store.undo_last(annotator_id, client_token=client_token)
    if receipt is None or not receipt.created:
        return receipt, None
    lease = float(lease_seconds if lease_seconds is not None else load_config(store).lease_seconds)
    with _write(store) as conn:
        undone = conn.execute(
            sa.select(assignments).where(assignments.c.comparison_id == receipt.comparison_id, assignments.c.annotator_id == annotator_id)
        ).mappings().first()
        if undone is None:
            return receipt, None  # a label given outside the UI: retracted, nothing to re-lease
        conn.execute(assignments.update().where(assignments.c.assignment_id == undone["assignment_id"]).values(status="undone", finished_at=now))
        if undone["kind"] != "repeat":
            _bump(conn, [undone["pair_id"]], taken=-1, labels=-1)
        live = _current(conn, annotator_id, now)
        if live is not None:
            conn.execute(assignments.update().where(assignments.c.assignment_id == live.assignment_id).values(status="released", finished_at=now))
            if live.kind != "repeat":
                _bump(conn, [live.pair_id], taken=-1)
        new_id = _lease(conn, annotator_id, undone["pair_id"], undone["kind"], undone["shown_left"], now, lease, undone["repeat_of"])
        return receipt, _load(conn, new_id)


def reconcile(store: "Store") -> int:
    """Finish the bookkeeping of labels committed before a crash; returns how many leases it fixed."""
    from .schema import label_events

    ensure_tables(store)
    with _read(store) as conn:
        rows = conn.execute(
            sa.select(assignments.c.assignment_id, label_events.c.label, label_events.c.comparison_id)
            .join(label_events, label_events.c.client_token == sa.literal(TOKEN_PREFIX) + assignments.c.assignment_id)
            .where(assignments.c.status.in_(("leased", "expired", "released", "skipped")))
        ).all()
    now = time.time()
    for aid, label, cid in rows:
        a = get_assignment(store, aid)
        if a is not None:
            _mark_labelled(store, a, label, cid, now)
    return len(rows)


# ---------------------------------------------------------------------------- reports
def assignments_frame(store: "Store", annotator_id: str | None = None) -> pl.DataFrame:
    """Every lease with its outcome (one row per assignment), oldest first."""
    cols = [c for c in assignments.c] + [pairs.c.prompt_id, pairs.c.response_a_id, pairs.c.response_b_id, pairs.c.gold_label]
    q = sa.select(*cols).join(pairs, pairs.c.pair_id == assignments.c.pair_id)
    if annotator_id is not None:
        q = q.where(assignments.c.annotator_id == annotator_id)
    with _read(store) as conn:
        result = conn.execute(q.order_by(assignments.c.leased_at, assignments.c.seq))
        names = list(result.keys())
        rows = result.fetchall()
    schema = {n: pl.String for n in names} | {"leased_at": pl.Float64, "expires_at": pl.Float64, "finished_at": pl.Float64, "seq": pl.Int64}
    return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")


def gold_reference(store: "Store") -> pl.DataFrame:
    """The known answers of the pool's gold pairs: ``pair_id, prompt_id, response_a_id, response_b_id, label``.

    Score annotators on them with ``workbench.diagnostics.noise.gold_accuracy(labels,
    reference=gold_reference(store))``; self-consistency on swapped-side repeats is
    ``noise.self_consistency(labels)``.
    """
    with _read(store) as conn:
        rows = conn.execute(
            sa.select(pairs.c.pair_id, pairs.c.prompt_id, pairs.c.response_a_id, pairs.c.response_b_id, pairs.c.gold_label)
            .where(pairs.c.gold_label.is_not(None)).order_by(pairs.c.sort_key)
        ).all()
    schema = {"pair_id": pl.String, "prompt_id": pl.String, "response_a_id": pl.String, "response_b_id": pl.String, "label": pl.String}
    return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")


def progress(store: "Store", annotator_id: str, now: float | None = None) -> dict[str, int]:
    """An annotator's progress: labelled today (UTC), labelled in all, and pairs left for them."""
    import datetime as dt

    now = time.time() if now is None else now
    midnight = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    cfg = load_config(store)
    with _read(store) as conn:
        today = conn.execute(sa.select(sa.func.count()).where(
            assignments.c.annotator_id == annotator_id, assignments.c.status == "labelled", assignments.c.finished_at >= midnight)).scalar_one()
        total = conn.execute(sa.select(sa.func.count()).where(
            assignments.c.annotator_id == annotator_id, assignments.c.status == "labelled")).scalar_one()
        left = conn.execute(sa.select(sa.func.count()).select_from(pairs).where(
            pairs.c.active.is_(True), pairs.c.gold_label.is_(None), pairs.c.n_taken < cfg.overlap, _not_seen_by(annotator_id))).scalar_one()
        live = _current(conn, annotator_id, now)
    return {"labelled_today": int(today), "labelled_total": int(total), "left_in_queue": int(left) + (1 if live is not None else 0)}
