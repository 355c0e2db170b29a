"""Core CLI commands: init, import, label, snapshot, versions, export, runs, stats, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMPORT_FORMATS_HELP = "auto (default), hh-rlhf, trl, llmfao, pandalm, arena, ratings, table, workbench"


def group(sub: Any, name: str, help: str) -> Any:
    """A command with subcommands; run without one, it prints its own help."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(_group_parser=p, func=None)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def open_store(args: argparse.Namespace) -> Any:
    import workbench

    return workbench.open(args.db)


def print_frame(frame: Any, max_rows: int = 50) -> None:
    import polars as pl

    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        print(frame)


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="create the store's tables (idempotent)", description="Create the store's tables if absent and print where it lives.")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import", help="import preference data from a file or folder", description="Import preference data in one transaction: a bad row stops it (naming file, line and field) and writes nothing, unless --skip-invalid.")
    p.add_argument("path", help="a .jsonl/.jsonl.gz/.json/.csv/.parquet file, a datasets folder, or a dataset folder (LLMFAO)")
    p.add_argument("--format", default="auto", help=f"one of: {IMPORT_FORMATS_HELP}")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN", help="column mapping for --format table (repeatable), e.g. --map response_a=output_1")
    p.add_argument("--skip-invalid", action="store_true", help="write the valid rows and put the rejects, with reasons, in a file")
    p.add_argument("--rejects", default=None, help="where the rejects go (default: ./<file>.rejects.jsonl)")
    p.add_argument("--annotator", default=None, help="annotator id for rows without one (default: import)")
    p.add_argument("--source", default="import", choices=["human", "import", "simulated", "model_judge"])
    p.set_defaults(func=cmd_import)

    lg = group(sub, "label", "add, correct or undo single labels")
    p = lg.add_parser("add", help="append one label event", description="Append one label event (idempotent on --client-token).")
    p.add_argument("--prompt-id", required=True)
    p.add_argument("--a", dest="response_a_id", required=True, help="response id shown as A")
    p.add_argument("--b", dest="response_b_id", required=True, help="response id shown as B")
    p.add_argument("--label", required=True, choices=["a", "b", "tie", "both_bad"])
    p.add_argument("--annotator", required=True)
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--shown-left", choices=["a", "b"], default=None)
    p.add_argument("--rationale", default=None)
    p.add_argument("--client-token", default=None)
    p.set_defaults(func=cmd_label_add)
    p = lg.add_parser("correct", help="supersede a comparison's label", description="Record a corrected label (a new event superseding the latest one).")
    p.add_argument("comparison_id")
    p.add_argument("--label", required=True, choices=["a", "b", "tie", "both_bad"])
    p.add_argument("--annotator", required=True)
    p.set_defaults(func=cmd_label_correct)
    p = lg.add_parser("undo", help="retract a comparison (or an annotator's last label)", description="Retract a comparison's label with a retract event (never a deletion).")
    p.add_argument("comparison_id", nargs="?", help="the comparison to retract (default: the annotator's last live label)")
    p.add_argument("--annotator", required=True)
    p.set_defaults(func=cmd_label_undo)

    p = sub.add_parser("snapshot", help="fix the current labels into a named, immutable version", description="Take a snapshot: a watermark, a content hash and a Parquet file under a name that is never reused.")
    p.add_argument("name")
    p.add_argument("--description", default=None)
    p.add_argument("--exclude-annotator", action="append", default=[], help="leave this annotator's labels out (repeatable)")
    p.add_argument("--source", action="append", default=None, help="keep only labels from this source (repeatable)")
    p.set_defaults(func=cmd_snapshot)

    vg = group(sub, "versions", "list, show, diff and verify versions")
    p = vg.add_parser("list", help="list versions", description="List versions, oldest first.")
    p.set_defaults(func=cmd_versions_list)
    p = vg.add_parser("show", help="show a version's stats and lineage", description="Show a version: hash, watermark, parent, stats and the runs recorded against it.")
    p.add_argument("version")
    p.add_argument("--head", type=int, default=0, help="also print the first N comparisons")
    p.set_defaults(func=cmd_versions_show)
    p = vg.add_parser("diff", help="comparisons added, removed or changed between two versions", description="Diff two versions by comparison id.")
    p.add_argument("old")
    p.add_argument("new")
    p.set_defaults(func=cmd_versions_diff)
    p = vg.add_parser("verify", help="check a version's file against its hashes", description="Check the version's Parquet file against its recorded SHA-256 (and, with --deep, its content hash).")
    p.add_argument("version")
    p.add_argument("--deep", action="store_true")
    p.set_defaults(func=cmd_versions_verify)

    p = sub.add_parser("export", help="export a version (TRL, Parquet, JSONL, datasets)", description="Export a version. trl/trl-conversational write prompt/chosen/rejected (to .jsonl, .parquet, or a datasets folder otherwise).")
    p.add_argument("version")
    p.add_argument("--format", default="trl", choices=["trl", "trl-conversational", "parquet", "jsonl", "datasets"])
    p.add_argument("--out", required=True)
    p.add_argument("--ties", default="drop", choices=["drop", "keep"], help="TRL formats: drop ties, or keep them with tie=true")
    p.set_defaults(func=cmd_export)

    rg = group(sub, "runs", "list and show run records")
    p = rg.add_parser("list", help="list runs (of a version)", description="List run records, optionally of one version and kind.")
    p.add_argument("--version", default=None)
    p.add_argument("--kind", default=None)
    p.set_defaults(func=cmd_runs_list)
    p = rg.add_parser("show", help="show a run record", description="Show one run: version, config, code revision, metrics, artifact, status.")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_runs_show)

    p = sub.add_parser("stats", help="counts of what the store holds now", description="Print counts of prompts, responses, annotators, label events, live comparisons, versions and runs.")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("demo", help="load the demo data, snapshot it, print stats (the README's main job)", description="Load the project's demo data into the store (idempotent), take a snapshot and print its stats; with --serve, then start the annotation UI on that store.")
    p.add_argument("--name", default=None, help="version name (default: demo-N, the next free N)")
    p.add_argument("--serve", action="store_true", help="start the annotation UI afterwards (when installed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=cmd_demo)


def cmd_init(args: argparse.Namespace) -> int:
    store = open_store(args)
    print(f"store: {store.url}\nfiles: {store.files_dir}")
    return 0


def _parse_mapping(items: list[str]) -> dict[str, str] | None:
    if not items:
        return None
    mapping = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--map takes FIELD=COLUMN, got {item!r}")
        k, v = item.split("=", 1)
        mapping[k.strip()] = v.strip()
    return mapping


def cmd_import(args: argparse.Namespace) -> int:
    store = open_store(args)
    report = store.import_file(
        args.path, args.format, mapping=_parse_mapping(args.map), skip_invalid=args.skip_invalid,
        rejects_path=args.rejects, annotator_id=args.annotator, source=args.source,
    )
    print(report)
    return 0


def cmd_label_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    r = store.add_label(
        args.prompt_id, args.response_a_id, args.response_b_id, args.label, args.annotator,
        strength=args.strength, shown_left=args.shown_left, rationale=args.rationale, client_token=args.client_token,
    )
    print(f"{'added' if r.created else 'already recorded'}: event {r.event_id}, comparison {r.comparison_id}")
    return 0


def cmd_label_correct(args: argparse.Namespace) -> int:
    r = open_store(args).correct(args.comparison_id, args.label, args.annotator)
    print(f"corrected: event {r.event_id} supersedes the previous label of {r.comparison_id}")
    return 0


def cmd_label_undo(args: argparse.Namespace) -> int:
    store = open_store(args)
    r = store.retract(args.comparison_id, args.annotator) if args.comparison_id else store.undo_last(args.annotator)
    if r is None:
        print("nothing to undo")
        return 1
    print(f"retracted {r.comparison_id} (event {r.event_id})")
    return 0


def _print_version(v: Any) -> None:
    print(f"version {v.name}\n  hash       {v.hash}\n  watermark  {v.watermark}\n  parent     {v.parent or '-'}\n"
          f"  created    {v.created_at:%Y-%m-%d %H:%M:%S} UTC\n  file       {v.path}")
    if v.description:
        print(f"  about      {v.description}")
    s = v.stats
    print(f"  {s['comparisons']} comparisons, {s['prompts']} prompts, {s['responses']} responses, "
          f"{s['annotators']} annotators, {s['models']} models")
    print("  labels     " + ", ".join(f"{k} {n}" for k, n in s["labels"].items()))
    print("  sources    " + ", ".join(f"{k} {n}" for k, n in sorted(s["sources"].items())))


def cmd_snapshot(args: argparse.Namespace) -> int:
    store = open_store(args)
    v = store.snapshot(args.name, description=args.description, exclude_annotators=args.exclude_annotator, sources=args.source)
    _print_version(v)
    return 0


def cmd_versions_list(args: argparse.Namespace) -> int:
    frame = open_store(args).versions()
    if frame.height == 0:
        print("no versions yet; take one with `workbench snapshot NAME`")
        return 0
    import polars as pl

    print_frame(frame.with_columns(pl.col("hash").str.slice(0, 12)))
    return 0


def cmd_versions_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    v = store.version(args.version)
    _print_version(v)
    runs = store.runs(v)
    if runs.height:
        print("  runs:")
        print_frame(runs.select("run_id", "kind", "name", "status", "created_at"))
    if args.head:
        print_frame(v.to_polars().head(args.head).select("comparison_id", "prompt", "response_a", "response_b", "label", "annotator_id"))
    return 0


def cmd_versions_diff(args: argparse.Namespace) -> int:
    d = open_store(args).diff(args.old, args.new)
    counts = {k: 0 for k in ("added", "removed", "changed")}
    for change, n in d.group_by("change").len().iter_rows():
        counts[change] = n
    print(f"{args.old} -> {args.new}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if d.height:
        print_frame(d, max_rows=30)
    return 0


def cmd_versions_verify(args: argparse.Namespace) -> int:
    v = open_store(args).version(args.version)
    v.verify(deep=args.deep)
    print(f"version {v.name}: file matches SHA-256 {v.file_sha256[:16]}..." + (f" and content hash {v.hash[:16]}..." if args.deep else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    v = open_store(args).version(args.version)
    path = v.export(args.out, args.format, ties=args.ties)
    print(f"exported version {v.name} ({v.hash[:12]}) as {args.format} to {path}")
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    frame = open_store(args).runs(args.version, args.kind)
    if frame.height == 0:
        print("no runs recorded")
        return 0
    import polars as pl

    print_frame(frame.select("run_id", "kind", "name", "status", "version_name", pl.col("version_hash").str.slice(0, 12), "created_at"))
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    r = open_store(args).run(args.run_id)
    out = {k: getattr(r, k) for k in ("run_id", "kind", "name", "status", "version_name", "version_hash", "parent_run_id",
                                      "code_revision", "config", "metrics", "artifact_path", "error")}
    out["created_at"] = str(r.created_at)
    out["finished_at"] = str(r.finished_at) if r.finished_at else None
    print(json.dumps(out, indent=2))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store = open_store(args)
    print(f"store: {store.url}")
    for k, v in store.stats().items():
        print(f"  {k:18s} {v}")
    return 0


DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


def load_demo(store: Any) -> tuple[Any, Any]:
    """Load the demo candidates and labels (idempotent: a second load adds nothing)."""
    import polars as pl

    if not (DEMO_DIR / "labels.jsonl").exists():
        raise FileNotFoundError(f"{DEMO_DIR}: demo data missing; run `python data/make_demo.py`")
    cands = pl.read_ndjson(DEMO_DIR / "responses.jsonl")
    cands = cands.with_columns(pl.struct("true_quality").struct.json_encode().alias("metadata"))
    added = store.add_candidates(cands)
    report = store.import_file(DEMO_DIR / "labels.jsonl", "workbench", source="simulated")
    return added, report


def cmd_demo(args: argparse.Namespace) -> int:
    store = open_store(args)
    print(f"store: {store.url}")
    added, report = load_demo(store)
    print(f"demo candidates: {added['prompts']} prompts and {added['responses']} responses added")
    print(f"demo labels: {report}")
    name = args.name
    if name is None:
        taken = set(store.versions()["name"].to_list())
        n = 1
        while f"demo-{n}" in taken:
            n += 1
        name = f"demo-{n}"
    v = store.snapshot(name, description="demo data snapshot")
    _print_version(v)
    if args.serve:
        try:
            from annotation_ui.cli import serve_store
        except ImportError:
            print("the annotation UI is not installed in this checkout", file=sys.stderr)
            return 1
        return int(serve_store(store, host=args.host, port=args.port, demo=True) or 0)
    return 0
