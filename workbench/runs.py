"""Run records: every fitted model, policy and diagnostic report names the version it saw.

A run stores the version's name and content hash, the config, the code revision, metrics, the
path of its artifact and its status (``running`` until :meth:`Run.finish`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import sqlalchemy as sa

from . import schema

if TYPE_CHECKING:
    from .store import Store
    from .versions import Version

STATUSES = ("running", "completed", "failed")


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """The git commit of the workbench's code (with ``-dirty`` if it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
            capture_output=True, text=True, timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "v" + version("preference-workbench")
    except PackageNotFoundError:
        return "unknown"


def _to_jsonable(obj: Any) -> Any:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    return json.loads(json.dumps(obj, default=lambda o: str(o) if isinstance(o, (Path, dt.datetime)) else o.item() if hasattr(o, "item") else repr(o)))


@dataclass
class Run:
    store: "Store"
    run_id: str
    kind: str
    version_name: str | None
    version_hash: str
    config: dict
    code_revision: str
    status: str = "running"
    metrics: dict | None = None
    artifact_path: str | None = None
    name: str | None = None
    parent_run_id: str | None = None
    error: str | None = None
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    def finish(self, metrics: dict | None = None, artifact_path: str | Path | None = None, status: str = "completed", error: str | None = None) -> "Run":
        """Close the run with its metrics and artifact; ``status`` is ``completed`` or ``failed``."""
        from .store import StoreError, utcnow

        if status not in ("completed", "failed"):
            raise ValueError("a run finishes as 'completed' or 'failed'")
        if self.status != "running":
            raise StoreError(f"run {self.run_id} already finished ({self.status})")
        self.metrics = _to_jsonable(metrics)
        self.artifact_path = str(artifact_path) if artifact_path is not None else None
        self.status, self.error, self.finished_at = status, error, utcnow()
        t = schema.runs
        with self.store._write() as conn:
            conn.execute(
                t.update().where(t.c.run_id == self.run_id).values(
                    metrics=json.dumps(self.metrics), artifact_path=self.artifact_path,
                    status=status, error=error, finished_at=self.finished_at,
                )
            )
        return self

    def fail(self, error: BaseException | str) -> "Run":
        return self.finish(status="failed", error=str(error))

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.status == "running":
            if exc is not None:
                self.fail(f"{exc_type.__name__}: {exc}")
            else:
                self.finish(metrics=self.metrics, artifact_path=self.artifact_path)


def start_run(store: "Store", kind: str, version: "Version | str", config: Any, *, name: str | None, parent_run_id: str | None) -> Run:
    from .store import NotFound, utcnow

    if not isinstance(kind, str) or not kind or len(kind) > 40:
        raise ValueError("a run kind is a short name such as 'reward_model', 'choice', 'policy', 'diagnostics'")
    v = store.version(version) if isinstance(version, str) else version
    if parent_run_id is not None:
        with store._read() as conn:
            if conn.execute(sa.select(schema.runs.c.run_id).where(schema.runs.c.run_id == parent_run_id)).first() is None:
                raise NotFound(f"unknown parent run {parent_run_id!r}")
    run = Run(
        store=store, run_id="run_" + uuid.uuid4().hex[:16], kind=kind, version_name=v.name,
        version_hash=v.hash, config=_to_jsonable(config), code_revision=code_revision(),
        name=name, parent_run_id=parent_run_id, created_at=utcnow(),
    )
    with store._write() as conn:
        conn.execute(
            schema.runs.insert().values(
                run_id=run.run_id, kind=kind, name=name, version_name=v.name, version_hash=v.hash,
                parent_run_id=parent_run_id, config=json.dumps(run.config), code_revision=run.code_revision,
                metrics=None, artifact_path=None, status="running", created_at=run.created_at,
            )
        )
    return run


def load_run(store: "Store", run_id: str) -> Run:
    from .store import NotFound, _as_utc

    t = schema.runs
    with store._read() as conn:
        row = conn.execute(sa.select(t).where(t.c.run_id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"unknown run {run_id!r}; see `workbench runs list`")
    return Run(
        store=store, run_id=row["run_id"], kind=row["kind"], version_name=row["version_name"],
        version_hash=row["version_hash"], config=json.loads(row["config"]), code_revision=row["code_revision"],
        status=row["status"], metrics=json.loads(row["metrics"]) if row["metrics"] else None,
        artifact_path=row["artifact_path"], name=row["name"], parent_run_id=row["parent_run_id"],
        error=row["error"], created_at=_as_utc(row["created_at"]), finished_at=_as_utc(row["finished_at"]),
    )


def list_runs(store: "Store", version: "Version | str | None", kind: str | None) -> pl.DataFrame:
    t = schema.runs
    q = sa.select(t.c.run_id, t.c.kind, t.c.name, t.c.status, t.c.version_name, t.c.version_hash, t.c.parent_run_id,
                  t.c.code_revision, t.c.metrics, t.c.artifact_path, t.c.created_at, t.c.finished_at)
    if version is not None:
        v = store.version(version) if isinstance(version, str) else version
        q = q.where(t.c.version_hash == v.hash)
    if kind is not None:
        q = q.where(t.c.kind == kind)
    return store._frame(q.order_by(t.c.created_at))
