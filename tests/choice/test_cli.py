"""`workbench fit choice VERSION ...` against a real SQLite store."""

import argparse

import numpy as np
import polars as pl
import pytest

from .conftest import simulate

workbench = pytest.importorskip("workbench")


def _store_with_version(tmp_path, ties=True):
    from workbench.cli import main  # noqa: F401  (the lead's CLI must import)

    frame, _ = simulate(6, 300, seed=1, ties="davidson" if ties else None, tie_param=0.3,
                        position=0.2)
    rng = np.random.default_rng(0)
    n = frame.height
    inputs = pl.DataFrame({
        "prompt": [f"prompt {i % 20}" for i in range(n)],
        "response_a": [f"answer {i} by {m}" for i, m in enumerate(frame["model_a"])],
        "model_a": frame["model_a"],
        "response_b": [f"reply {i} by {m}" for i, m in enumerate(frame["model_b"])],
        "model_b": frame["model_b"],
        "label": frame["label"],
        "annotator_id": [f"w{k}" for k in rng.integers(0, 4, n)],
        "shown_left": frame["shown_left"],
    })
    db = str(tmp_path / "wb.db")
    store = workbench.open(db)
    store.add_comparisons(inputs, source="simulated")
    version = store.snapshot("v1")
    # a second Store on the same SQLite file fails ("disk I/O error") while this one is open
    store.close()
    return db, version


def test_fit_choice_prints_leaderboard_and_records_run(tmp_path, capsys):
    from workbench.cli import main

    from rm.choice import BradleyTerry

    db, version = _store_with_version(tmp_path)
    out = tmp_path / "davidson.npz"
    rc = main(["--db", db, "fit", "choice", "v1", "--model", "davidson", "--position-effect",
               "--output", str(out), "--bootstrap", "20"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Davidson on version v1" in text and "item000" in text and "left-side advantage" in text
    runs = workbench.open(db).runs(version.hash)
    run = runs.filter(pl.col("kind") == "choice").row(0, named=True)
    assert run["status"] == "completed"
    assert "log_likelihood" in str(run["metrics"]) and run["artifact_path"] == str(out)
    model = BradleyTerry.load(out)
    assert model.fitted_on_ == version.hash
    assert "bootstrap_ci_low" in model.scores_.columns


def test_fit_choice_failure_marks_run_failed(tmp_path, capsys):
    from workbench.cli import main

    db, version = _store_with_version(tmp_path, ties=False)
    rc = main(["--db", db, "fit", "choice", "v1", "--model", "rao-kupper"])
    assert rc == 1
    assert "no ties" in capsys.readouterr().err
    run = workbench.open(db).runs(version.hash).filter(pl.col("kind") == "choice").row(0, named=True)
    assert run["status"] == "failed"
    assert main(["--db", db, "fit", "choice", "no-such-version"]) == 1


def test_fit_choice_style_control_and_annotators(tmp_path, capsys):
    from workbench.cli import main

    db, version = _store_with_version(tmp_path)
    rc = main(["--db", db, "fit", "choice", "v1", "--model", "annotator-bt", "--ties", "davidson",
               "--style-control", "--l2", "0.1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "AnnotatorBradleyTerry" in text and "least reliable annotators" in text


def test_register_on_a_bare_parser():
    from rm.choice.cli import cmd_fit_choice, register

    parser = argparse.ArgumentParser()
    parser.add_argument("--db")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["fit", "choice", "v", "--model", "thurstone", "--l2", "0.5",
                              "--covariate", "x", "--covariate", "y"])
    assert args.func is cmd_fit_choice and args.model == "thurstone" and args.l2 == 0.5
    assert args.covariate == ["x", "y"]
    register(sub)  # registering twice reuses the `fit` group
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "choice", "v", "--model", "nope"])
