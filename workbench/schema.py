"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Label events are append-only: nothing in ``label_events`` is ever updated or deleted. A
correction is a new event with the same ``comparison_id`` and a larger ``event_id``; an undo is a
``retract`` event. A version resolves each comparison to its latest event at a watermark.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 1
LABELS = ("a", "b", "tie", "both_bad")
SOURCES = ("human", "import", "simulated", "model_judge")
ROLES = ("annotator", "admin")

metadata = MetaData()

# BigInteger autoincrement on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
EventId = BigInteger().with_variant(Integer(), "sqlite")

meta = Table(
    "wb_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

prompts = Table(
    "prompts",
    metadata,
    Column("prompt_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # text | messages
    Column("text", Text, nullable=False),  # the text, or the rendered conversation
    Column("messages", Text),  # JSON list of {role, content}; null for text prompts
    Column("category", String(200)),
    Column("metadata", Text),  # JSON object
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("kind in ('text', 'messages')", name="ck_prompt_kind"),
)

responses = Table(
    "responses",
    metadata,
    Column("response_id", String(32), primary_key=True),
    Column("prompt_id", String(32), ForeignKey("prompts.prompt_id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("model", String(200)),  # the generator that wrote it
    Column("metadata", Text),  # JSON object
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_responses_prompt", responses.c.prompt_id)

annotators = Table(
    "annotators",
    metadata,
    Column("annotator_id", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False, server_default="annotator"),
    Column("secret_hash", Text),  # salted hash of a password or token; never the secret
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("role in ('annotator', 'admin')", name="ck_annotator_role"),
)

label_events = Table(
    "label_events",
    metadata,
    Column("event_id", EventId, primary_key=True, autoincrement=True),
    Column("comparison_id", String(32), nullable=False),
    Column("kind", String(8), nullable=False, server_default="label"),  # label | retract
    Column("supersedes", EventId),  # the event this one corrects or retracts
    Column("prompt_id", String(32), ForeignKey("prompts.prompt_id"), nullable=False),
    Column("response_a_id", String(32), ForeignKey("responses.response_id"), nullable=False),
    Column("response_b_id", String(32), ForeignKey("responses.response_id"), nullable=False),
    Column("label", String(8)),  # a | b | tie | both_bad; null for a retraction
    Column("strength", Float),
    Column("annotator_id", String(200), ForeignKey("annotators.annotator_id"), nullable=False),
    Column("shown_left", String(1)),
    Column("source", String(16), nullable=False),
    Column("gold", Boolean, nullable=False, server_default="0"),
    Column("rationale", Text),
    Column("duration_ms", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("client_token", String(200), nullable=False, unique=True),
    Column("import_id", String(40)),
    CheckConstraint("kind in ('label', 'retract')", name="ck_event_kind"),
    CheckConstraint(
        "(kind = 'retract' and label is null) or label in ('a', 'b', 'tie', 'both_bad')",
        name="ck_event_label",
    ),
    CheckConstraint("shown_left is null or shown_left in ('a', 'b')", name="ck_event_shown_left"),
    CheckConstraint(
        "source in ('human', 'import', 'simulated', 'model_judge')", name="ck_event_source"
    ),
)
Index("ix_events_comparison", label_events.c.comparison_id, label_events.c.event_id)
Index("ix_events_annotator", label_events.c.annotator_id, label_events.c.event_id)

imports = Table(
    "imports",
    metadata,
    Column("import_id", String(40), primary_key=True),
    Column("path", Text, nullable=False),
    Column("format", String(40), nullable=False),
    Column("file_sha256", String(64)),
    Column("rows_read", Integer, nullable=False),
    Column("rows_rejected", Integer, nullable=False),
    Column("labels_added", Integer, nullable=False),
    Column("prompts_added", Integer, nullable=False),
    Column("responses_added", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

versions = Table(
    "versions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("watermark", EventId, nullable=False),  # the largest event id the version saw
    Column("parent", String(200)),  # the version this one follows (lineage)
    Column("path", Text, nullable=False),  # Parquet file, relative to the store's files dir
    Column("file_sha256", String(64), nullable=False),
    Column("n_comparisons", Integer, nullable=False),
    Column("stats", Text, nullable=False),  # JSON
    Column("filters", Text),  # JSON: what was excluded when the snapshot was taken
    Column("description", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_versions_hash", versions.c.content_hash)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("kind", String(40), nullable=False),  # reward_model | choice | policy | diagnostics ...
    Column("name", String(200)),
    Column("version_name", String(200)),
    Column("version_hash", String(64), nullable=False),
    Column("parent_run_id", String(40)),  # e.g. the reward-model run a policy consumed
    Column("config", Text, nullable=False),  # JSON
    Column("code_revision", String(80)),
    Column("metrics", Text),  # JSON
    Column("artifact_path", Text),
    Column("status", String(16), nullable=False),  # running | completed | failed
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("status in ('running', 'completed', 'failed')", name="ck_run_status"),
)
Index("ix_runs_version", runs.c.version_hash)

settings = Table(
    "settings",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
)
