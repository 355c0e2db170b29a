"""`workbench fit choice VERSION ...`: fit an item-level choice model and print a leaderboard.

    workbench [--db URL] fit choice VERSION [--model bt|thurstone|davidson|rao-kupper|annotator-bt]
        [--item-a model_a] [--item-b model_b] [--label label] [--position-effect]
        [--covariate COL ...] [--both-bad tie|drop|separate] [--l2 0.0] [--anchor ITEM]
        [--bootstrap N] [--seed S] [--output model.npz] [--top 30]

The run is recorded in the store (kind ``choice``) with the config, the log-likelihood and the
artifact path.  This module is light: numpy, polars and the models load inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODELS = {
    "bt": "BradleyTerry",
    "thurstone": "Thurstone",
    "davidson": "Davidson",
    "rao-kupper": "RaoKupper",
    "annotator-bt": "AnnotatorBradleyTerry",
}


def _fit_subparsers(subparsers):
    """The subparsers of the top-level ``fit`` command, created or reused."""
    if "fit" in subparsers.choices:
        fit_parser = subparsers.choices["fit"]
        for action in fit_parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        return fit_parser.add_subparsers(dest="fit_command", metavar="SUBCOMMAND")
    fit_parser = subparsers.add_parser("fit", help="fit models on a version (choice: item scores)",
                                       description="Fit models on a version.")
    fit_parser.set_defaults(_group_parser=fit_parser, func=None)
    return fit_parser.add_subparsers(dest="fit_command", metavar="SUBCOMMAND")


def register(subparsers) -> None:
    sub = _fit_subparsers(subparsers)
    if "choice" in sub.choices:  # already registered
        return
    p = sub.add_parser(
        "choice", help="Bradley-Terry-family scores of items (models, responses) on a version",
        description="Fit a discrete-choice model (Bradley-Terry, Thurstone, Davidson or "
        "Rao-Kupper ties, annotator reliabilities) on a version, print a leaderboard and record "
        "a run.")
    p.add_argument("version", help="version name or hash")
    p.add_argument("--model", choices=sorted(MODELS), default="bt")
    p.add_argument("--item-a", default="model_a", help="column naming the first item")
    p.add_argument("--item-b", default="model_b", help="column naming the second item")
    p.add_argument("--label", default="label", help="label column (a|b|tie|both_bad)")
    p.add_argument("--link", choices=("logit", "probit"), default=None)
    p.add_argument("--ties", choices=("half", "drop", "davidson", "rao-kupper"), default=None,
                   help="tie model (default: the model's own)")
    p.add_argument("--both-bad", choices=("tie", "drop", "separate"), default="tie")
    p.add_argument("--position-effect", action="store_true", help="fit a left-side advantage")
    p.add_argument("--covariate", action="append", default=[],
                   help="per-comparison covariate column (a minus b), repeatable")
    p.add_argument("--style-control", action="store_true",
                   help="add length/markdown style covariates computed from the response texts")
    p.add_argument("--l2", type=float, default=0.0, help="Gaussian prior precision on the scores")
    p.add_argument("--anchor", default=None, help="item whose score is fixed at 0 (Elo base)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="bootstrap rounds for CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="where to save the fitted model (.npz)")
    p.add_argument("--top", type=int, default=30, help="leaderboard rows to print")
    p.add_argument("--name", default=None, help="run name")
    p.set_defaults(func=cmd_fit_choice)


def cmd_fit_choice(args: argparse.Namespace) -> int:
    import polars as pl

    import workbench

    from . import models

    store = workbench.open(args.db)
    version = store.version(args.version)
    params = {"both_bad": args.both_bad, "position_effect": args.position_effect,
              "l2": args.l2, "anchor": args.anchor}
    if args.link:
        params["link"] = args.link
    if args.ties:
        params["ties"] = args.ties
    data = version
    covariates = list(args.covariate)
    if args.style_control:
        data = models.style_features(version.to_polars())
        style = ["style_length", "style_headers", "style_lists", "style_bold"]
        unused = [c for c in style if not data[c].abs().sum()]
        if unused:
            print(f"style control: {', '.join(unused)} are zero in every comparison, left out",
                  file=sys.stderr)
        covariates += [c for c in style if c not in unused]
    if covariates:
        params["covariates"] = covariates
    model = getattr(models, MODELS[args.model])(**params)
    config = {"model": args.model, "item_a": args.item_a, "item_b": args.item_b,
              "label": args.label, "bootstrap": args.bootstrap, "seed": args.seed,
              **model.get_params()}
    run = store.start_run("choice", version, config, name=args.name)
    try:
        model.fit(data, item_a=args.item_a, item_b=args.item_b, label=args.label)
        model.fitted_on_ = version.hash
        if args.bootstrap:
            model.bootstrap(args.bootstrap, seed=args.seed)
        output = Path(args.output) if args.output else None
        if output is not None:
            model.save(output)
    except BaseException as exc:
        run.fail(f"{type(exc).__name__}: {exc}")
        raise
    board = model.scores_.head(args.top)
    cols = ["rank", "item", "score", "std_error", "ci_low", "ci_high", "elo", "comparisons",
            "wins", "losses", "ties"]
    cols += [c for c in ("bootstrap_ci_low", "bootstrap_ci_high") if c in board.columns]
    with pl.Config(tbl_rows=args.top, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=160,
                   tbl_hide_dataframe_shape=True, float_precision=3):
        print(f"{type(model).__name__} on version {version.name} ({version.hash[:12]}): "
              f"{model.n_comparisons_} comparisons, {model.n_items_} items, "
              f"log-likelihood {model.log_likelihood_:.3f}")
        print(board.select(cols))
        if model.position_effect_ is not None:
            print(f"left-side advantage: {model.position_effect_:.4f}")
        if model.tie_params_:
            print("tie parameters: " + ", ".join(f"{k}={v:.4f}" for k, v in model.tie_params_.items()))
        if model.annotators_ is not None:
            print("least reliable annotators:")
            print(model.annotators_.head(10))
    metrics = {"log_likelihood": model.log_likelihood_, "n_items": model.n_items_,
               "n_comparisons": model.n_comparisons_, "n_iter": model.n_iter_,
               "top_item": str(model.scores_["item"][0])}
    if model.position_effect_ is not None:
        metrics["position_effect"] = model.position_effect_
    if model.tie_params_:
        metrics.update({f"tie_{k}": v for k, v in model.tie_params_.items()})
    run.finish(metrics=metrics, artifact_path=str(output) if output else None)
    print(f"run {run.run_id} recorded" + (f"; model saved to {output}" if output else ""),
          file=sys.stderr)
    return 0
