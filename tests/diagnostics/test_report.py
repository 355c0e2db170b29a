"""The report: files, run record, escaping of hostile text, CLI, failures."""

from __future__ import annotations

import json

import polars as pl
import pytest

import workbench
from workbench.cli import main
from workbench.diagnostics import DiagnosticsConfig, build_report
from workbench.simulate import SimulationConfig, simulate

HOSTILE = "<script>alert('x')</script>"
HOSTILE_IMG = '"><img src=x onerror=alert(1)>$\\frac{1}{0}$'


def _sim(**kw):
    base = dict(n_prompts=40, n_pairs=500, labels_per_pair=3, n_annotators=12, spammer_share=0.1, repeat_rate=0.1, gold_rate=0.1, seed=2)
    return simulate(SimulationConfig(**{**base, **kw}))


def test_report_on_a_version_records_a_run(tmp_path):
    store = workbench.open(tmp_path / "w.db")
    v = _sim().to_store(store, snapshot="v1").version
    rep = build_report(v, tmp_path / "out", store=store, config={"target_mix": {"coding": 0.5, "math": 0.5}})
    assert rep.html_path.exists() and rep.metrics_path.exists()
    metrics = json.loads(rep.metrics_path.read_text())
    assert metrics["version"] == {"name": "v1", "hash": v.hash}
    assert metrics["size"]["labels"] == v.n_comparisons
    assert set(metrics["agreement"]) >= {"fleiss_kappa", "krippendorff_alpha"}
    assert 0 <= metrics["noise"]["flip_rate"] <= 1 and metrics["findings"]
    for name in ("reliability", "left_side", "degrees", "model_matrix", "categories", "score_range", "flip_posteriors"):
        assert rep.plots[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pl.read_csv(rep.tables["annotators"]).height == metrics["size"]["annotators"]
    run = store.run(rep.run_id)
    assert run.kind == "diagnostics" and run.status == "completed" and run.version_hash == v.hash
    assert run.config["target_mix"] == {"coding": 0.5, "math": 0.5}
    assert run.metrics["noise"]["flip_rate"] == metrics["noise"]["flip_rate"]
    assert run.artifact_path == str((tmp_path / "out").resolve())
    # worst findings first, and the summary leads with them
    assert rep.findings["severity"].is_sorted(descending=True)
    lines = rep.summary().splitlines()
    assert "v1" in lines[0] and rep.findings["finding"][0] in lines[1]
    # by name, too
    rep2 = build_report("v1", tmp_path / "out2", store=store, record_run=False)
    assert rep2.run_id is None and rep2.metrics["size"] == rep.metrics["size"]


def test_html_escapes_text_from_the_data(tmp_path):
    c = _sim().comparisons()
    c = c.with_columns(
        pl.when(pl.col("annotator_id") == "sim-01").then(pl.lit(HOSTILE)).otherwise(pl.col("annotator_id")).alias("annotator_id"),
        pl.when(pl.col("model_a") == "atlas-7b").then(pl.lit(HOSTILE_IMG)).otherwise(pl.col("model_a")).alias("model_a"),
        pl.when(pl.col("model_b") == "atlas-7b").then(pl.lit(HOSTILE_IMG)).otherwise(pl.col("model_b")).alias("model_b"),
        pl.lit("</td></table><script>bad()</script>").alias("category"),
    )
    rep = build_report(c, tmp_path / "out", config=DiagnosticsConfig(max_table_rows=500))
    page = rep.html_path.read_text()
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # shown, escaped
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "http://" not in page and "https://" not in page  # nothing remote
    assert rep.plots["model_matrix"].exists()  # a '$' in a model name does not break matplotlib


def test_bad_inputs_write_nothing_and_fail_the_run(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        build_report(pl.DataFrame(schema={"response_a_id": pl.String, "response_b_id": pl.String, "label": pl.String, "annotator_id": pl.String}), tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="needs a store"):
        build_report("v1", tmp_path / "o")
    with pytest.raises(ValueError, match="target_mix"):
        DiagnosticsConfig(target_mix={"x": float("nan")})
    with pytest.raises(ValueError, match="unknown fields"):
        DiagnosticsConfig.from_yaml("min_comparisons: 3\nbogus: 1\n")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        build_report(_sim().comparisons(), tmp_path / "file")
    # a failure inside a recorded run marks it failed
    store = workbench.open(tmp_path / "w.db")
    v = simulate(SimulationConfig(n_prompts=5, n_pairs=20, labels_per_pair=1, tie_gap=100.0, seed=1)).to_store(store, snapshot="ties").version
    with pytest.raises(ValueError, match="no decisive labels"):
        build_report(v, tmp_path / "t", store=store)
    runs = store.runs(v, kind="diagnostics")
    assert runs.height == 1 and runs["status"][0] == "failed"


def test_cli_diagnose(tmp_path, capsys):
    db = str(tmp_path / "w.db")
    assert main(["--db", db, "simulate", "--set", "n_prompts=30", "--set", "n_pairs=300", "--set", "spammer_share=0.2",
                 "--set", "n_annotators=10", "--snapshot", "s1"]) == 0
    capsys.readouterr()
    samples = tmp_path / "new.txt"
    samples.write_text("a question about zebras and giraffes\n[coding #1] Please help with: function loop\n")
    cfg = tmp_path / "diag.yaml"
    cfg.write_text("min_comparisons: 4\n")
    assert main(["--db", db, "diagnose", "s1", "--out", str(tmp_path / "rep"), "--config", str(cfg), "--target", "coding=1",
                 "--target", "math=1", "--new-samples", str(samples)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("diagnostics of s1") and "[high]" in out and "run: run_" in out
    assert "random clicking" in out
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["coverage"]["embedding"]["n_new"] == 2
    assert main(["--db", db, "diagnose", "nope", "--out", str(tmp_path / "rep2")]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["--db", db, "diagnose", "s1", "--out", str(tmp_path / "rep3"), "--target", "coding"]) == 1
    assert main(["--db", db, "diagnose", "s1", "--out", str(tmp_path / "rep3"), "--new-samples", str(tmp_path / "missing.txt")]) == 1
    assert main(["--db", db, "runs", "list", "--kind", "diagnostics"]) == 0


def test_a_caller_model_drives_the_prior_and_the_score_range(tmp_path):
    import numpy as np

    sim = _sim()
    u = dict(zip(sim.candidates["response_id"], sim.candidates["utility"]))

    class TrueUtility:  # duck-typed: anything with predict_proba(frame) -> P(a)
        def predict_proba(self, frame):
            d = np.array([u[a] - u[b] for a, b in zip(frame["response_a_id"], frame["response_b_id"])])
            return 1 / (1 + np.exp(-d / 0.5))

    rep = build_report(sim.comparisons(), tmp_path / "m", model=TrueUtility(), plots=False)
    assert rep.noise.model.score_array_ is None  # no BT fit: the caller's model is the prior
    p = TrueUtility().predict_proba(sim.comparisons())
    first = sim.comparisons()["response_a_id"] < sim.comparisons()["response_b_id"]
    easy = np.abs(np.where(first.to_numpy(), p, 1 - p) - 0.5) >= 0.4
    assert rep.coverage.score_range.filter(pl.col("band") == "easy")["share"][0] == pytest.approx(easy.mean(), abs=0.05)
