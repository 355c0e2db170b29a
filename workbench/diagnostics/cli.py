"""``workbench diagnose`` and ``workbench simulate`` (light module: heavy imports run in the handlers)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose", help="report on label noise and coverage of a version",
        description="Diagnose a version: agreement, annotator reliability, side/length/speed biases, suspect labels, "
        "intransitivity, comparison-graph coverage, category mix, generators, score range. Writes report.html, "
        "metrics.json, plots/ and tables/ into --out, records a 'diagnostics' run and prints the worst findings first.",
    )
    p.add_argument("version", help="version name or hash (prefix)")
    p.add_argument("--out", required=True, help="folder for report.html, metrics.json, plots/ and tables/")
    p.add_argument("--config", default=None, help="YAML file of DiagnosticsConfig fields (target_mix, min_comparisons, ...)")
    p.add_argument("--target", action="append", default=[], metavar="CATEGORY=SHARE", help="target share of prompts for a category (repeatable)")
    p.add_argument("--new-samples", default=None, help="texts to check embedding coverage for: .txt (one per line), .jsonl/.parquet/.csv with a 'text' column")
    p.add_argument("--no-run", action="store_true", help="do not record a run")
    p.add_argument("--top", type=int, default=8, help="findings to print (default 8)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser(
        "simulate", help="simulate annotators with known truth into the store",
        description="Simulate prompts, responses with hidden utilities and annotators (honest Bradley-Terry, flips, side and "
        "length bias, spammers, adversarial, fatigue, ties) and write them into the store as source=simulated; the truth "
        "goes beside it (or to --truth).",
    )
    p.add_argument("--config", default=None, help="YAML file of SimulationConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field (repeatable; YAML value)")
    p.add_argument("--snapshot", default=None, help="take a version of this name afterwards")
    p.add_argument("--truth", default=None, help="folder for the truth (default: <store files>/simulations/<config digest>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=cmd_simulate)


def _parse_target(items: list[str]) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--target takes CATEGORY=SHARE, got {item!r}")
        k, v = item.rsplit("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError as exc:
            raise ValueError(f"--target {item!r}: the share must be a number") from exc
    return out


def _read_texts(path: str) -> list[str]:
    from pathlib import Path

    import polars as pl

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix == ".txt":
        texts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        frame = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p) if p.suffix == ".csv" else pl.read_ndjson(p)
        col = next((c for c in ("text", "response", "completion") if c in frame.columns), None)
        if col is None:
            raise ValueError(f"{p}: needs a 'text' (or 'response'/'completion') column; found {frame.columns}")
        texts = [t for t in frame[col].cast(pl.String).to_list() if t]
    if not texts:
        raise ValueError(f"{p}: no texts")
    return texts


def cmd_diagnose(args: argparse.Namespace) -> int:
    import workbench

    from .report import DiagnosticsConfig, build_report

    cfg = DiagnosticsConfig.from_yaml(args.config) if args.config else DiagnosticsConfig()
    target = _parse_target(args.target)
    if target:
        cfg = DiagnosticsConfig(**{**cfg.to_dict(), "target_mix": target})
    store = workbench.open(args.db)
    version = store.version(args.version)
    new = _read_texts(args.new_samples) if args.new_samples else None
    report = build_report(version, args.out, store=store, config=cfg, new_samples=new, record_run=not args.no_run, progress=True)
    print(report.summary(n=args.top))
    if report.run_id:
        print(f"run: {report.run_id}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import yaml

    from ..simulate import SimulationConfig, simulate

    data: dict = {}
    if args.config:
        data = SimulationConfig.from_yaml(args.config).to_dict()
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        data[k.strip()] = yaml.safe_load(v)
    cfg = SimulationConfig.from_dict(data)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    import workbench

    sim = simulate(cfg)
    store = workbench.open(args.db)
    receipt = sim.to_store(store, snapshot=args.snapshot, truth_path=args.truth)
    kinds = sim.truth_annotators.group_by("kind").len().sort("kind")
    print(f"simulated {sim.labels.height:,} labels from {cfg.n_annotators} annotators ("
          + ", ".join(f"{n} {k}" for k, n in kinds.iter_rows()) + f"); true flip rate {sim.true_flip_rate:.3f}")
    print(receipt)
    return 0
