"""``workbench train sft|dpo|ppo|nash|bon VERSION [--rm RUN] --config FILE.yaml``.

Light at import time (no torch): the handlers import what they need. The config is read and
checked first, then the version and the fitted model, so a bad config, an unknown version or a
missing run fails before any training starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STAGES = {
    "sft": "supervised fine-tuning on the chosen responses (makes the reference policy)",
    "dpo": "the DPO family (sigmoid, IPO, robust, conservative, preference MLE, preference distillation)",
    "ppo": "PPO against a fitted reward model (tabular: the exact KL-regularized optimum)",
    "nash": "Nash-MD against a fitted preference model (tabular: Nash-MD iterations)",
    "bon": "best-of-n sampling with a fitted reward model (the baseline)",
}


def register(subparsers: Any) -> None:
    train = subparsers.add_parser("train", help="train a policy on a version", description="Policy stages on a store version.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, help_text in STAGES.items():
        p = stages.add_parser(stage, help=help_text, description=help_text)
        p.add_argument("version", metavar="VERSION", help="version name or hash")
        p.add_argument("--rm", metavar="RUN", default=None, help="run id of a fitted reward / preference model")
        p.add_argument("--config", metavar="FILE.yaml", default=None, help="stage config (YAML); defaults otherwise")
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
        p.set_defaults(func=handle_train)


def _fitted_model(store, run_ref: str | None):
    if run_ref is None:
        return None
    run = store.run(run_ref)
    if not run.artifact_path:
        raise ValueError(f"run {run_ref} has no artifact: it saved no fitted model")
    from rm.cli import load_model

    return load_model(run.artifact_path)


def _load_lm(config):
    if not config.model:
        raise ValueError("the config needs `model:` (a local model folder) for representation 'lm'")
    path = Path(config.model)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path} (models load from local folders only)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(config.tokenizer or path)), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True), tokenizer


def run_tabular(stage: str, version, config, fitted, store=None, parent_run_id: str | None = None) -> dict[str, Any]:
    """The tabular stages on a version: fit, save the policy (.npz), record the run.

    ``parent_run_id`` names the run of the fitted model the stage consumed (its lineage).
    """
    import dataclasses

    from .protocols import BradleyTerryPreference
    from .tabular import (TabularBestOfN, TabularDPO, TabularNashMD, TabularPreferenceMLE, TabularPreferences,
                          TabularRLHF, bradley_terry_rewards)

    table = TabularPreferences.from_comparisons(version)
    if fitted is not None and not (hasattr(fitted, "reward") or hasattr(fitted, "proba")):
        raise TypeError(f"the fitted model {type(fitted).__name__} has neither reward() nor proba()")
    reward = fitted if fitted is not None and hasattr(fitted, "reward") else bradley_terry_rewards(table.wins, table.mask, l2=1e-2)
    if fitted is not None and hasattr(fitted, "proba"):
        preference = fitted
    elif fitted is not None:
        preference = BradleyTerryPreference(fitted)
    else:
        preference = table.empirical_preference()
    if stage == "dpo" and config.loss in ("preference_mle", "preference_distillation"):
        wins = None
        if config.loss == "preference_distillation":  # the fitted model's expected wins on the same pairs
            counts = table.wins + table.wins.transpose(0, 2, 1)
            wins = counts * table.preference_table(preference)
        model = TabularPreferenceMLE(gamma=config.gamma, beta=config.beta).fit(table, wins)
    elif stage == "dpo":
        model = TabularDPO(beta=config.beta, loss="ipo" if config.loss == "ipo" else "sigmoid", l2=1e-2).fit(table)
    elif stage == "ppo":
        model = TabularRLHF(beta=config.kl_coef).fit(table, reward)
    elif stage == "nash":
        model = TabularNashMD(tau=config.tau, n_iterations=config.n_iterations).fit(table, preference)
    elif stage == "bon":
        model = TabularBestOfN(n=config.n).fit(table, reward)
    else:
        raise ValueError(f"stage {stage!r} has no tabular form (sft needs a language model)")
    run = (store.start_run(f"policy_{stage}_tabular", version, config=dataclasses.asdict(config), parent_run_id=parent_run_id)
           if store else None)
    try:
        report = model.evaluate(preference)
        metrics = {"win_rate_vs_reference": float(report["win_rate"].mean()),
                   "kl_to_reference": float(report["kl_to_reference"].mean()),
                   "n_prompts": table.n_prompts, "fitted_model": "given" if fitted is not None else "fitted on the version"}
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        artifact = model.save(out / f"tabular-{stage}.npz")
    except BaseException:
        if run is not None:
            run.finish(metrics={}, status="failed")
        raise
    if run is not None:
        run.finish(metrics=metrics, artifact_path=str(artifact))
    return {**metrics, "artifact_path": str(artifact), "run_id": run.run_id if run is not None else None}


def handle_train(args: argparse.Namespace) -> int:
    from .config import STAGE_CONFIGS, ConfigError, load_config

    stage = args.stage
    try:
        config = load_config(args.config, STAGE_CONFIGS[stage])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import workbench

    store = workbench.open(getattr(args, "db", None))
    try:
        version = store.version(args.version)
        fitted = _fitted_model(store, args.rm)
        if stage in ("ppo", "bon") and config.representation == "lm" and fitted is None:
            raise ValueError(f"train {stage} needs --rm RUN (a fitted reward model)")
        if stage == "nash" and config.representation == "lm" and fitted is None:
            raise ValueError("train nash needs --rm RUN (a fitted preference or reward model)")
        if config.representation == "tabular":
            result = run_tabular(stage, version, config, fitted, store, parent_run_id=args.rm)
        else:
            result = _run_lm(stage, version, config, fitted, store, args.resume, parent_run_id=args.rm)
    except (ValueError, TypeError, FileNotFoundError, KeyError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def _run_lm(stage: str, version, config, fitted, store, resume: bool, parent_run_id: str | None = None) -> dict[str, Any]:
    from .lm import DPO, PPO, SFT, BestOfN, NashMDPG
    from .protocols import BradleyTerryPreference

    model, tokenizer = _load_lm(config)
    if stage == "sft":
        est = SFT(config).fit(version, model, tokenizer, store=store, resume=resume)
    elif stage == "dpo":  # preference distillation reads P(a > b): a reward model gives sigmoid(r(a) - r(b))
        pref = fitted if fitted is None or hasattr(fitted, "proba") else BradleyTerryPreference(fitted)
        est = DPO(config).fit(version, model, tokenizer, preference_model=pref, store=store, resume=resume,
                              parent_run_id=parent_run_id)
    elif stage == "ppo":
        est = PPO(config).fit(version, model, tokenizer, fitted, store=store, resume=resume, parent_run_id=parent_run_id)
    elif stage == "nash":
        pref = fitted if hasattr(fitted, "proba") else BradleyTerryPreference(fitted)
        est = NashMDPG(config).fit(version, model, tokenizer, pref, store=store, resume=resume, parent_run_id=parent_run_id)
    else:
        est = BestOfN(config).fit(version, model, tokenizer, fitted, store=store, parent_run_id=parent_run_id)
    return {**est.metrics_, "artifact_path": getattr(est, "artifact_path_", None)}
