"""CLI commands of the annotation app: ``workbench serve`` and ``workbench annotators ...``.

Light at import time (no gradio): handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEMO_ADMIN = "demo-admin"
DEMO_ANNOTATOR = "demo-annotator"


def register(sub: Any) -> None:
    from workbench.cli_core import group

    p = sub.add_parser("serve", help="start the annotation app (browser UI and JSON API)",
                       description="Start the annotation app on the store: the Gradio UI at / (login required) and the JSON API under /api.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--build-pairs", action="store_true", help="first put every pair of responses to each prompt in the pool")
    p.set_defaults(func=cmd_serve)

    g = group(sub, "annotators", "manage annotator accounts")
    p = g.add_parser("add", help="create an account and print its password once",
                     description="Create an account; its password is printed once and only a salted scrypt hash is stored.")
    p.add_argument("name")
    p.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    p.add_argument("--reset", action="store_true", help="give an existing account a new password")
    p.set_defaults(func=cmd_annotators_add)
    p = g.add_parser("list", help="list accounts", description="List annotators with their roles.")
    p.set_defaults(func=cmd_annotators_list)
    p = g.add_parser("disable", help="disable an account", description="Disable an account (its labels stay).")
    p.add_argument("name")
    p.set_defaults(func=cmd_annotators_disable)

    g = group(sub, "pairs", "the pool of pairs annotators compare")
    p = g.add_parser("build", help="put pairs of responses to each prompt in the pool",
                     description="Add every pair of responses to each prompt (or a random subset per prompt) to the annotation pool (idempotent).")
    p.add_argument("--max-per-prompt", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pairs_build)


def _open(args: argparse.Namespace) -> Any:
    import workbench

    return workbench.open(args.db)


def cmd_annotators_add(args: argparse.Namespace) -> int:
    from workbench import auth

    store = _open(args)
    password = auth.create_account(store, args.name, args.role, reset=args.reset)
    print(f"{args.role} {args.name!r} {'reset' if args.reset else 'created'}; password (shown once, only its hash is stored):")
    print(password)
    return 0


def cmd_annotators_list(args: argparse.Namespace) -> int:
    from workbench.cli_core import print_frame

    print_frame(_open(args).annotators())
    return 0


def cmd_annotators_disable(args: argparse.Namespace) -> int:
    _open(args).set_annotator(args.name, active=False)
    print(f"disabled {args.name}")
    return 0


def cmd_pairs_build(args: argparse.Namespace) -> int:
    from workbench import assign

    store = _open(args)
    n = assign.build_pairs(store, max_pairs_per_prompt=args.max_per_prompt, seed=args.seed)
    print(f"{n} pairs added; the pool holds {assign.pool(store).height}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    store = _open(args)
    if args.build_pairs:
        from workbench import assign

        print(f"{assign.build_pairs(store)} pairs added to the pool")
    return serve_store(store, host=args.host, port=args.port)


def ensure_demo_accounts(store: Any) -> dict[str, str]:
    """Create (idempotently) a demo admin and annotator; returns ``{name: password}`` for new or reset ones.

    The demo passwords are random and printed each time ``demo --serve`` starts: an existing demo
    account gets a fresh one, since only hashes are stored.
    """
    from workbench import auth

    out = {}
    for name, role in ((DEMO_ADMIN, "admin"), (DEMO_ANNOTATOR, "annotator")):
        out[name] = auth.create_account(store, name, role, reset=True)
    return out


def prepare_demo_pool(store: Any) -> int:
    """Put the demo's pairs in the pool and mark a few with clear quality gaps as gold."""
    import json

    import polars as pl

    from workbench import assign

    added = assign.build_pairs(store)
    if not added:
        return 0
    resp = store.responses().select("response_id", "metadata")
    quality = {}
    for rid, meta in resp.iter_rows():
        try:
            q = json.loads(meta).get("true_quality") if meta else None
        except (ValueError, AttributeError):
            q = None
        if isinstance(q, (int, float)):
            quality[rid] = float(q)
    pool = assign.pool(store)
    golds = 0
    for row in pool.filter(pl.col("gold_label").is_null()).iter_rows(named=True):
        qa, qb = quality.get(row["response_a_id"]), quality.get(row["response_b_id"])
        if qa is not None and qb is not None and abs(qa - qb) > 0.6 and golds < 20:
            assign.set_gold(store, row["pair_id"], "a" if qa > qb else "b")
            golds += 1
    if golds:
        cfg = assign.load_config(store)
        if cfg.gold_rate == 0:
            cfg.gold_rate = 0.05
            assign.save_config(store, cfg)
    return added


def serve_store(store: Any, host: str = "127.0.0.1", port: int = 7860, demo: bool = False) -> int:
    """Start the app on ``store``; with ``demo``, prepare the demo pool and accounts and print the logins."""
    from annotation_ui.app import serve
    from workbench import assign

    if demo:
        n = prepare_demo_pool(store)
        logins = ensure_demo_accounts(store)
        print(f"annotation pool: {assign.pool(store).height} pairs ({n} new)")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"annotation app: http://{shown}:{port}/  (JSON API under /api; Ctrl-C stops)")
    if demo:
        for name, pw in logins.items():
            print(f"  login  {name:16s} password {pw}")
    if assign.pool(store).height == 0:
        print("the pool is empty: add pairs with `workbench pairs build` (or serve --build-pairs)", file=sys.stderr)
    sys.stdout.flush()
    serve(store, host=host, port=port)
    return 0
