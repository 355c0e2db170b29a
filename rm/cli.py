"""`workbench rm ...`: train and evaluate text reward / preference models.

    workbench [--db URL] rm train feature    --version NAME --output DIR [--encoder tfidf|minilm] [--C 1.0|cv]
    workbench [--db URL] rm train neural     --version NAME --output DIR [--model FOLDER] [--config cfg.yaml] ...
    workbench [--db URL] rm train preference --version NAME --output DIR   (antisymmetric cross-encoder)
    workbench [--db URL] rm eval DIR         --version NAME [--plot reliability.png]

`--data FILE` (Parquet, CSV or JSON lines in the comparisons shape) replaces `--version` where
no store is at hand (no run is recorded then). Neural training runs unchanged under
`accelerate launch -m rm.cli [--db URL] train neural ...` (`python -m rm.cli` is the same CLI).

This module is light: everything heavy is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

KINDS = ("feature", "neural", "preference")


def _rm_subparsers(subparsers):
    """The subparsers of the top-level `rm` command, created or reused (`rm.choice` may add its own)."""
    if "rm" in subparsers.choices:
        rm_parser = subparsers.choices["rm"]
        for action in rm_parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        return rm_parser.add_subparsers(dest="rm_command", metavar="SUBCOMMAND")
    rm_parser = subparsers.add_parser("rm", help="reward and preference models: train, eval")
    rm_parser.set_defaults(_group_parser=rm_parser)
    return rm_parser.add_subparsers(dest="rm_command", metavar="SUBCOMMAND")


def _add_data_args(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--version", help="name or hash of a store version")
    src.add_argument("--data", help="a comparisons file (.parquet, .csv, .jsonl/.json) instead of a version")


def register(subparsers) -> None:
    sub = _rm_subparsers(subparsers)

    train = sub.add_parser("train", help="fit a reward model (feature|neural) or a preference model (preference)")
    train.add_argument("kind", choices=KINDS, help="feature: linear BT on frozen features; neural: fine-tuned "
                       "sequence classifier; preference: antisymmetric cross-encoder")
    _add_data_args(train)
    train.add_argument("--output", required=True, help="folder to save the model in")
    train.add_argument("--eval-version", help="held-out version (or --eval-data file) evaluated after training")
    train.add_argument("--eval-data", help="held-out comparisons file")
    train.add_argument("--name", help="run name")
    feat = train.add_argument_group("feature model")
    feat.add_argument("--encoder", choices=("tfidf", "minilm"), default="tfidf")
    feat.add_argument("--C", default="1.0", help="inverse L2 strength, or 'cv' to pick it by cross-validation")
    feat.add_argument("--ties", choices=("davidson", "drop"), default="davidson")
    neural = train.add_argument_group("neural / preference model")
    neural.add_argument("--config", help="YAML file of NeuralRewardConfig fields (flags below override it)")
    neural.add_argument("--model", help="local Hugging Face folder (default: packaged all-MiniLM-L6-v2)")
    for flag, typ in (("--epochs", int), ("--batch-size", int), ("--max-length", int), ("--learning-rate", float),
                      ("--seed", int), ("--eval-fraction", float), ("--center-coef", float),
                      ("--label-smoothing", float), ("--margin-scale", float), ("--save-steps", int),
                      ("--max-steps", int)):
        neural.add_argument(flag, type=typ, default=None)
    neural.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    neural.add_argument("--gradient-checkpointing", action="store_true", default=None)
    neural.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=handle_train)

    ev = sub.add_parser("eval", help="accuracy, log loss, ECE, reliability plot, accuracy by category")
    ev.add_argument("model_dir", help="a folder saved by `rm train`")
    _add_data_args(ev)
    ev.add_argument("--plot", help="write the reliability diagram to this PNG")
    ev.add_argument("--by-category", action="store_true", help="also print accuracy by category")
    ev.set_defaults(func=handle_eval)


# ------------------------------------------------------------------------------------------------
def _read_data_file(path: str):
    import polars as pl

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    if suffix == ".parquet":
        return pl.read_parquet(p)
    if suffix == ".csv":
        return pl.read_csv(p)
    if suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
        return pl.read_ndjson(p)
    if suffix == ".json":
        return pl.read_json(p)
    raise ValueError(f"{p}: unsupported file type {suffix!r} (use .parquet, .csv, .jsonl or .json)")


def _open_data(args, version_name: str | None, data_path: str | None):
    """(data, store or None): a store version when named, else a frame read from a file."""
    if version_name:
        import workbench

        store = workbench.open(getattr(args, "db", None))
        return store.version(version_name), store
    return _read_data_file(data_path), None


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _neural_config(args):
    from dataclasses import replace

    from rm.neural import NeuralRewardConfig

    config = NeuralRewardConfig.from_yaml(args.config) if args.config else NeuralRewardConfig()
    overrides = {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
        "learning_rate": args.learning_rate, "seed": args.seed, "eval_fraction": args.eval_fraction,
        "center_coef": args.center_coef, "label_smoothing": args.label_smoothing, "margin_scale": args.margin_scale,
        "save_steps": args.save_steps, "max_steps": args.max_steps, "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides["output_dir"] = args.output
    if args.no_progress:
        overrides["progress"] = False
    return replace(config, **overrides)


def handle_train(args) -> int:
    from dataclasses import asdict

    data, store = _open_data(args, args.version, args.data)
    eval_data = None
    if args.eval_version or args.eval_data:
        eval_data, _ = _open_data(args, args.eval_version, args.eval_data)
    if args.kind == "feature":
        from rm.features import FeatureRewardModel

        C = "cv" if args.C == "cv" else float(args.C)
        model = FeatureRewardModel(encoder=args.encoder, C=C, ties=args.ties)
        config = {"kind": "feature", **model.get_params()}
    else:
        from rm.neural import NeuralRewardModel
        from rm.preference import CrossEncoderPreference

        cls = NeuralRewardModel if args.kind == "neural" else CrossEncoderPreference
        model = cls(_neural_config(args))
        config = {"kind": args.kind, **asdict(model.config)}
    main = _is_main_process()
    run = store.start_run("reward_model", data, config, name=args.name) if (store is not None and main) else None
    try:
        if args.kind == "feature":
            model.fit(data)
        else:
            model.fit(data, eval_data=eval_data) if eval_data is not None else model.fit(data)
        metrics = dict(getattr(model, "metrics_", {}) or {})
        metrics.update({k: v for k, v in getattr(model, "counts_", {}).items()})
        if eval_data is not None and main:
            from rm.evaluate import evaluate_preferences

            metrics.update({f"heldout_{k}": v for k, v in evaluate_preferences(model, eval_data).metrics().items()
                            if k != "version_hash"})
        if main:
            model.save(args.output, metrics=metrics)
    except BaseException as exc:
        if run is not None:
            run.fail(f"{type(exc).__name__}: {exc}")
        raise
    if run is not None:
        run.finish(metrics=metrics, artifact_path=str(Path(args.output).resolve()))
    if main:
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        print(f"saved {args.kind} model to {args.output}" + (f" (run {run.run_id})" if run is not None else ""))
        for k, v in shown.items():
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


def load_model(path: str | Path):
    """Load any model saved by `rm` from its folder (kind read from its metadata)."""
    from rm.ensemble import RewardEnsemble, load_single_model

    path = Path(path)
    if (path / "workbench_ensemble.json").exists():
        return RewardEnsemble.load(path)
    return load_single_model(path)


def handle_eval(args) -> int:
    from rm.evaluate import evaluate_preferences

    model = load_model(args.model_dir)
    data, store = _open_data(args, args.version, args.data)
    evaluation = evaluate_preferences(model, data)
    metrics = evaluation.metrics()
    if args.plot:
        evaluation.plot_reliability(args.plot)
    if store is not None:
        run = store.start_run("reward_model_eval", data, {"model_dir": str(Path(args.model_dir).resolve())})
        run.finish(metrics=metrics, artifact_path=args.plot)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    if args.by_category:
        print(evaluation.by_category)
    return 0


def main(argv=None) -> int:
    """`python -m rm.cli ...` / `accelerate launch -m rm.cli ...`: the `rm` commands on their own."""
    parser = argparse.ArgumentParser(prog="rm", description="reward and preference models")
    parser.add_argument("--db", default=None, help="store URL or SQLite path")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "rm" not in argv:
        for i, token in enumerate(argv):
            if token in ("train", "eval"):
                argv.insert(i, "rm")
                break
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, LookupError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
