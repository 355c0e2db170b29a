"""Diagnostics on label noise and coverage: can I trust this version, and what is missing?

>>> from workbench.diagnostics import build_report
>>> report = build_report(store.version("v1"), "out/diag", store=store)
>>> print(report.summary())

The parts, each a function of a ``Version`` or a comparisons frame returning polars frames:
:mod:`workbench.diagnostics.noise` (agreement, reliability, biases, suspect labels,
intransitivity), :mod:`workbench.diagnostics.coverage` (graph, categories, generators, score
range, embedding coverage), :mod:`workbench.diagnostics.reliability` (the annotator model).
Imports are lazy so ``import workbench.diagnostics`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "Report", "DiagnosticsConfig", "analyze_noise", "analyze_coverage", "PairDawidSkene"]


def __getattr__(name: str) -> Any:
    if name in ("build_report", "Report", "DiagnosticsConfig"):
        from . import report

        return getattr(report, name)
    if name == "analyze_noise":
        from .noise import analyze_noise

        return analyze_noise
    if name == "analyze_coverage":
        from .coverage import analyze_coverage

        return analyze_coverage
    if name == "PairDawidSkene":
        from .reliability import PairDawidSkene

        return PairDawidSkene
    raise AttributeError(f"module 'workbench.diagnostics' has no attribute {name!r}")
