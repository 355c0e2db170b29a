"""Discrete-choice reward models on items: Bradley-Terry, Thurstone, Davidson and Rao-Kupper
ties, position effects, annotator reliabilities, covariates (style control), Plackett-Luce.

Items are whatever two columns name (models in an arena, responses of a prompt).  One estimator
class, :class:`BradleyTerry`, holds the pairwise family; ``Thurstone``, ``Davidson``,
``RaoKupper`` and ``AnnotatorBradleyTerry`` are the same class with other defaults (see
:mod:`rm.choice.models`).  :class:`PlackettLuce` fits rankings and best-of-k choices.

Modules: ``data`` (comparisons table -> aggregated pair counts, identifiability checks),
``outcomes`` (outcome probabilities and their derivatives per link and tie model), ``solvers``
(dense Newton, sparse Newton-CG, batched bootstrap solves), ``bootstrap`` (exact Poisson
resampling of counts), ``models`` (the estimators), ``plackett_luce``, ``cli``
(``workbench fit choice``).

    from rm.choice import Davidson
    model = Davidson(position_effect=True).fit(store.version("v1"))
    model.scores_, model.predict_proba("gpt-4", "llama-2"), model.bootstrap(200, seed=0)
"""

from .data import NoFiniteMLEError, PairCounts, aggregate
from .plackett_luce import PlackettLuce
from .models import (
    AnnotatorBradleyTerry,
    BradleyTerry,
    Davidson,
    NotFittedError,
    RaoKupper,
    Thurstone,
    style_features,
)

__all__ = [
    "AnnotatorBradleyTerry",
    "BradleyTerry",
    "Davidson",
    "NoFiniteMLEError",
    "NotFittedError",
    "PairCounts",
    "PlackettLuce",
    "RaoKupper",
    "Thurstone",
    "aggregate",
    "style_features",
]
