import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rm.neural import (NeuralRewardConfig, NeuralRewardModel, NotASequenceClassifierError, PairEncoder,
                       latest_checkpoint, length_grouped_batches)
from rm.pairs import EmptyTextError, NoUsablePairsError
from rm_test_data import FakeVersion, simulated_pairs

REPO = Path(__file__).resolve().parents[2]


def _cfg(tiny_model_dir, **kw):
    base = dict(model=str(tiny_model_dir), max_length=48, batch_size=8, epochs=2, learning_rate=2e-3,
                progress=False, eval_fraction=0.2)
    base.update(kw)
    return NeuralRewardConfig(**base)


def test_fit_learns_saves_hf_format_and_plain_transformers_gives_same_rewards(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    frame, truth = simulated_pairs(96, seed=0, scale=3.0)
    version = FakeVersion(frame, hash="h" * 64)
    out = tmp_path / "rm"
    model = NeuralRewardModel(_cfg(tiny_model_dir, epochs=3, output_dir=str(out), center_coef=0.01)).fit(version)
    hist = model.history_frame
    assert hist.filter(pl.col("eval_accuracy").is_not_null()).height == 3  # evaluated each epoch
    losses = hist.filter(pl.col("loss").is_not_null())["loss"].to_numpy()
    assert losses[-4:].mean() < losses[:4].mean() - 0.05
    texts = list(truth)[:40]
    r = model.reward(["question 1"] * len(texts), texts)
    assert np.corrcoef(r, [truth[t] for t in texts])[0, 1] > 0.3
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    meta = json.loads((out / "workbench_reward_model.json").read_text())
    assert meta["version_hash"] == "h" * 64 and meta["config"]["epochs"] == 3 and "eval_accuracy" in meta["metrics"]
    # plain transformers, no workbench code: the same rewards
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    import torch

    with torch.no_grad():
        enc = tok(["question 1"] * 5, texts[:5], padding=True, return_tensors="pt")
        plain = hf(**enc).logits.squeeze(-1).numpy()
    np.testing.assert_allclose(plain, r[:5], atol=1e-5)
    loaded = NeuralRewardModel.load(out)
    np.testing.assert_allclose(loaded.reward(["question 1"] * len(texts), texts), r, atol=1e-6)
    assert loaded.version_hash_ == "h" * 64


def test_truncation_rule_counted_and_reported(tiny_model_dir):
    assert PairEncoder.keep_lengths(10, 10, 40) == (10, 10)
    assert PairEncoder.keep_lengths(100, 10, 40) == (30, 10)  # prompt keeps its last 30 tokens
    assert PairEncoder.keep_lengths(5, 100, 40) == (5, 35)  # short prompt kept whole
    assert PairEncoder.keep_lengths(100, 100, 40) == (20, 20)  # response keeps half the budget
    from transformers import AutoTokenizer

    enc = PairEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), 16)
    prompt = " ".join(f"p{i}" for i in range(40))
    ids, _, counts = enc.encode([prompt, "hi"], ["resp " * 30, "short"])
    assert max(len(x) for x in ids) <= 16
    assert counts.n_truncated == 1 and counts.n_prompt_truncated == 1 and counts.n_response_truncated == 1
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.decode(ids[0]).split("[SEP]")[0].strip().endswith("p39")  # the latest prompt tokens survive
    frame = pl.DataFrame({"prompt": [prompt] * 12, "response_a": ["good answer " * 20] * 12,
                          "response_b": [f"bad {i}" for i in range(12)], "label": ["a"] * 12})
    with pytest.warns(UserWarning, match="truncated"):
        m = NeuralRewardModel(_cfg(tiny_model_dir, max_length=16, epochs=1, eval_fraction=0.0)).fit(frame)
    assert m.truncation_["n_truncated"] == 24 and m.metrics_["truncation_n_truncated"] == 24


def test_bad_input(tiny_model_dir, tmp_path):
    frame, _ = simulated_pairs(16, seed=1)
    with pytest.raises(NoUsablePairsError):
        NeuralRewardModel(_cfg(tiny_model_dir)).fit(frame.with_columns(pl.lit("both_bad").alias("label")))
    with pytest.raises(EmptyTextError):
        NeuralRewardModel(_cfg(tiny_model_dir)).fit(frame.with_columns(pl.lit("").alias("response_a")))
    with pytest.raises(NotASequenceClassifierError, match="no config.json"):
        NeuralRewardModel(_cfg(tmp_path)).fit(frame)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(NotASequenceClassifierError, match="no AutoModelForSequenceClassification"):
        NeuralRewardModel(_cfg(clip)).fit(frame)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(NotASequenceClassifierError, match="only from safetensors"):
        NeuralRewardModel(_cfg(pickled)).fit(frame)
    with pytest.raises(NotASequenceClassifierError, match="one-output"):
        from transformers import AutoModel

        base = tmp_path / "base"
        AutoModel.from_pretrained(tiny_model_dir).save_pretrained(base)
        shutil.copy(tiny_model_dir / "tokenizer.json", base)
        NeuralRewardModel.load(base)
    with pytest.raises(ValueError, match="ties"):
        NeuralRewardModel(_cfg(tiny_model_dir, ties="x")).fit(frame)


def test_davidson_ties_in_neural_model(tiny_model_dir):
    frame, _ = simulated_pairs(48, seed=2, tie_rate=0.8)
    assert (frame["label"] == "tie").sum() > 5
    m = NeuralRewardModel(_cfg(tiny_model_dir, epochs=1, eval_fraction=0.0)).fit(frame)
    assert m.tie_log_nu_ is not None and m.counts_["n_ties"] > 5
    m2 = NeuralRewardModel(_cfg(tiny_model_dir, epochs=1, eval_fraction=0.0, ties="drop")).fit(frame)
    assert m2.tie_log_nu_ is None and m2.counts_["n_dropped_ties"] == m.counts_["n_ties"]


def test_gradient_accumulation_trains_the_same_model_as_one_big_batch(tiny_model_dir):
    """4 micro-batches of 2 pairs per step give the gradient of the 8-pair batch: same weights,
    same loss curve (the Davidson tie parameter and the centering term included)."""
    import torch

    frame, _ = simulated_pairs(48, seed=4, tie_rate=0.2)
    kw = dict(epochs=1, eval_fraction=0.0, center_coef=0.01, seed=3)
    whole = NeuralRewardModel(_cfg(tiny_model_dir, **kw)).fit(frame)
    accumulated = NeuralRewardModel(_cfg(tiny_model_dir, gradient_accumulation_steps=4, **kw)).fit(frame)
    assert whole.tie_log_nu_ is not None
    steps = lambda m: m.history_frame.filter(pl.col("loss").is_not_null())
    assert (steps(accumulated)["micro_batches"] == 4).all() and (steps(whole)["micro_batches"] == 1).all()
    np.testing.assert_allclose(steps(accumulated)["loss"].to_numpy(), steps(whole)["loss"].to_numpy(), rtol=1e-4)
    # the two models differ by float rounding only: far less than what training moved the weights
    from transformers import AutoModelForSequenceClassification

    init = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).state_dict()
    a, b = whole.model_.state_dict(), accumulated.model_.state_dict()
    moved = torch.sqrt(sum(((a[k].float() - init[k].float()) ** 2).sum() for k in init))
    apart = torch.sqrt(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in init))
    print(f"training moved the weights by {moved:.3e}; the two runs differ by {apart:.3e}")
    assert moved > 1e-2 and apart < 1e-3 * moved
    assert abs(whole.tie_log_nu_ - accumulated.tie_log_nu_) < 1e-4
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        NeuralRewardModel(_cfg(tiny_model_dir, gradient_accumulation_steps=9)).fit(frame)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        NeuralRewardModel(_cfg(tiny_model_dir, gradient_accumulation_steps=0)).fit(frame)


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1000)
    grouped = length_grouped_batches(lengths, 8, seed=3, group=True)
    plain = length_grouped_batches(lengths, 8, seed=3, group=False)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(1000))
    pad = lambda bs: sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)
    assert pad(grouped) < 0.2 * pad(plain)


def _train_script(tiny_model_dir, data_path, out, **kw):
    cfg = dict(model=str(tiny_model_dir), max_length=32, batch_size=4, epochs=2, learning_rate=1e-3,
               progress=False, eval_fraction=0.0, output_dir=str(out), save_steps=2, seed=0)
    cfg.update(kw)
    return (f"import polars as pl, time, sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            f"from rm.neural import NeuralRewardModel, NeuralRewardConfig\n"
            f"NeuralRewardModel(NeuralRewardConfig(**{cfg!r})).fit(pl.read_parquet({str(data_path)!r}))\n")


def test_resume_after_kill_reaches_the_same_model(tiny_model_dir, tmp_path):
    frame, _ = simulated_pairs(32, seed=3)
    data = tmp_path / "pairs.parquet"
    frame.write_parquet(data)
    out = tmp_path / "killed"
    # a run that is killed (SIGKILL) once a checkpoint exists, slowed by a sleep per step
    script = _train_script(tiny_model_dir, data, out).replace(
        "from rm.neural import", "import rm.neural as N\n_orig = N.NeuralRewardModel._batch_loss_sum\n"
        "def _slow(*a, **k):\n    time.sleep(0.4)\n    return _orig(*a, **k)\n"
        "N.NeuralRewardModel._batch_loss_sum = _slow\nfrom rm.neural import")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.time() + 90
    while time.time() < deadline and latest_checkpoint(out) is None and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = latest_checkpoint(out)
    assert ckpt is not None, "no checkpoint was written before the kill"
    assert not (out / "model.safetensors").exists()  # it really died mid-training
    cfg = NeuralRewardConfig(model=str(tiny_model_dir), max_length=32, batch_size=4, epochs=2, learning_rate=1e-3,
                             progress=False, eval_fraction=0.0, output_dir=str(out), save_steps=2, seed=0)
    resumed = NeuralRewardModel(cfg).fit(frame)
    assert resumed.resumed_from_ == str(ckpt)
    straight = NeuralRewardModel(NeuralRewardConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "straight")})).fit(frame)
    a = [h["loss"] for h in resumed.history_ if "loss" in h]
    b = [h["loss"] for h in straight.history_ if "loss" in h]
    assert len(a) == len(b) == 16
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    texts = frame["response_a"].to_list()
    np.testing.assert_allclose(resumed.reward(frame["prompt"], texts), straight.reward(frame["prompt"], texts), atol=1e-4)


def test_two_processes_under_accelerate_launch_match_one_process(tiny_model_dir, tmp_path):
    frame, _ = simulated_pairs(32, seed=4)
    data = tmp_path / "pairs.parquet"
    frame.write_parquet(data)
    script = tmp_path / "train.py"
    script.write_text(_train_script(tiny_model_dir, data, tmp_path / "ddp", epochs=1, save_steps=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "ddp" / "workbench_reward_model.json").read_text())["history"]
    one = NeuralRewardModel(NeuralRewardConfig(model=str(tiny_model_dir), max_length=32, batch_size=4, epochs=1,
                                               learning_rate=1e-3, progress=False, eval_fraction=0.0, seed=0)).fit(frame)
    a = [h["loss"] for h in two if "loss" in h]
    b = [h["loss"] for h in one.history_ if "loss" in h]
    assert len(a) == len(b) == 8
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
