"""Run records on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from workbench.runs import code_revision
from workbench.store import NotFound, StoreError

from test_store import pairs_frame


@dataclass
class Config:
    lr: float = 0.1
    epochs: int = 3


def test_runs_lifecycle_and_listing(store):
    store.add_comparisons(pairs_frame(4))
    v1 = store.snapshot("v1")
    store.add_comparisons(pairs_frame(6, seed=2).tail(2))
    v2 = store.snapshot("v2")
    run = store.start_run("reward_model", v1, config=Config(), name="bt")
    assert run.status == "running" and run.version_hash == v1.hash and run.config == {"lr": 0.1, "epochs": 3}
    assert run.code_revision == code_revision() and run.code_revision
    run.finish(metrics={"accuracy": 0.75}, artifact_path="/tmp/model.safetensors")
    with pytest.raises(StoreError, match="already finished"):
        run.finish()
    loaded = store.run(run.run_id)
    assert (loaded.status, loaded.metrics, loaded.artifact_path) == ("completed", {"accuracy": 0.75}, "/tmp/model.safetensors")
    assert loaded.finished_at is not None and loaded.created_at <= loaded.finished_at
    failed = store.start_run("policy", "v2", config={"beta": 0.1}, parent_run_id=run.run_id)
    failed.fail(RuntimeError("out of memory"))
    assert store.run(failed.run_id).status == "failed" and "out of memory" in store.run(failed.run_id).error
    with store.start_run("diagnostics", v2) as ctx:
        ctx.metrics = {"noise": 0.1}
    assert store.run(ctx.run_id).status == "completed"
    with pytest.raises(ZeroDivisionError):
        with store.start_run("diagnostics", v2) as bad:
            1 / 0
    assert store.run(bad.run_id).status == "failed"
    assert store.runs(v1)["run_id"].to_list() == [run.run_id]
    assert set(store.runs("v2")["kind"]) == {"policy", "diagnostics"}
    assert store.runs(kind="diagnostics").height == 2 and store.runs().height == 4
    rec = store.record_run("choice", v1, {"model": "bt"}, metrics={"ll": -1.0})
    assert store.run(rec.run_id).status == "completed"


def test_runs_bad_input(store):
    store.add_comparisons(pairs_frame(2))
    v = store.snapshot("v1")
    with pytest.raises(NotFound):
        store.start_run("policy", "nope")
    with pytest.raises(NotFound):
        store.start_run("policy", v, parent_run_id="run_missing")
    with pytest.raises(ValueError):
        store.start_run("", v)
    with pytest.raises(ValueError):
        store.start_run("x" * 41, v)
    run = store.start_run("policy", v)
    with pytest.raises(ValueError):
        run.finish(status="weird")
    assert store.runs().height == 1
