"""Pairwise discrete-choice estimators: Bradley-Terry and its relatives.

One estimator class, :class:`BradleyTerry`, covers the family; the named subclasses only change
defaults:

=========================  =====================================================================
class                      model
=========================  =====================================================================
``BradleyTerry``           ``P(i > j) = F(s_i - s_j)`` with ``F`` logistic (``link="logit"``)
``Thurstone``              the same with ``F = Phi`` (``link="probit"``, Thurstone case V)
``Davidson``               ``ties="davidson"``: a fitted tie rate ``nu`` (Davidson 1970)
``RaoKupper``              ``ties="rao-kupper"``: a fitted threshold ``eta`` (Rao & Kupper 1967;
                           with ``link="probit"`` it is Glenn & David 1960)
``AnnotatorBradleyTerry``  ``annotator_reliability=True``: ``d = tau_k (s_i - s_j)`` with one
                           reliability (inverse temperature) ``tau_k`` per annotator, prior
                           ``N(1, 1/annotator_l2)``; ``tau`` near 0 is a careless annotator,
                           below 0 an adversarial one
=========================  =====================================================================

Options that combine with all of them: ``position_effect=True`` adds ``gamma * side`` to the
predictor (``side = +1`` when the first item was shown on the left, ``-1`` when on the right,
``0`` unknown), so a left-side bias is estimated and kept out of the scores; ``covariates=[...]``
adds ``beta . x`` for per-comparison columns holding "a minus b" features (contextual
Bradley-Terry / arena style control; see :func:`style_features`); ``l2`` is a Gaussian prior
``N(0, 1/l2)`` on the scores (MAP; needed when the data have no finite MLE); ``anchor`` pins
one item's reported score to ``anchor_score``; the ``elo`` column is the score on the Elo scale
(``elo_base + 400 / ln 10 * score`` for logit, ``elo_base + 200 sqrt 2 * score`` for probit).

Labels are ``"a"``, ``"b"``, ``"tie"`` and ``"both_bad"``; ``both_bad="tie"`` counts "both bad"
as a tie, ``"drop"`` ignores it and ``"separate"`` keeps it as its own outcome (with a tie model:
``P(both bad) = pi * P(tie-like)``, ``pi`` fitted).

Example::

    model = Davidson(position_effect=True).fit(version, item_a="model_a", item_b="model_b")
    model.scores_            # polars: item, score, std_error, ci_low, ci_high, elo, ...
    model.predict_proba("gpt-4", "llama-2-70b")   # [P(win), P(tie), P(loss)]
    model.bootstrap(200, seed=0).scores_          # adds bootstrap CIs
"""

from __future__ import annotations

import inspect
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import scipy.linalg as sla
from scipy.stats import norm

from . import solvers
from .bootstrap import TABLE_MAX_MEAN, max_draw, poisson_counts, poisson_plan
from .data import NoFiniteMLEError, PairCounts, aggregate, check_identifiable, save_npz_atomically
from .outcomes import make_outcome

FORMAT_VERSION = 1
BOOTSTRAP_STREAMS = 2  # parts of a batch of bootstrap rounds, each on its own thread


class _Deferred:
    """A fitted attribute that needs the standard errors, computed on its first read.

    ``fit`` stops at the point estimates; the Hessian's Cholesky factorization and the diagonal
    of its inverse (a fifth of a dense fit at 1,000 items) and the tables that show the standard
    errors are made by ``_materialize`` when one of these attributes is first read, once.
    Assignment works as for a plain attribute (``load`` and ``bootstrap`` assign them).
    """

    def __set_name__(self, owner, name):
        self.name = name
        owner._DEFERRED = (*getattr(owner, "_DEFERRED", ()), name)  # what a refit forgets

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            pass
        if obj.__dict__.get("_pending") is None:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}")
        obj._materialize()
        return obj.__dict__[self.name]

    def __set__(self, obj, value):
        obj.__dict__[self.name] = value


def _elo_factor(link: str) -> float:
    return 400.0 / math.log(10.0) if link == "logit" else 200.0 * math.sqrt(2.0)


class NotFittedError(RuntimeError):
    pass


class BradleyTerry:
    """Pairwise comparison model on items (see the module docstring for the whole family).

    ``fit`` computes the scores; the standard errors and the tables that show them
    (``scores_``, ``coef_``, ``annotators_``, ``tie_params_``) are computed when first read.

    Parameters
    ----------
    link : "logit" (Bradley-Terry) or "probit" (Thurstone).
    ties : "half" (a tie is half a win each), "drop", "davidson" or "rao-kupper".
    both_bad : "tie", "drop" or "separate".
    position_effect : fit a left-side advantage from the ``shown_left`` column.
    covariates : per-comparison numeric columns (first-minus-second features).
    annotator_reliability : fit one reliability per annotator (``annotator_id`` column).
    l2 : Gaussian prior precision on the scores (0 = maximum likelihood).
    annotator_l2 : prior precision of the reliabilities around 1.
    anchor, anchor_score : report scores relative to this item, which gets ``anchor_score``.
    elo_base : Elo of a score of 0 (of the anchor when one is given).
    confidence : level of the Wald intervals ``ci_low``/``ci_high``.
    solver : "auto", "dense" (Newton, dense Hessian) or "sparse" (Newton-CG, sparse Hessian).
    dense_limit : "auto" uses the dense solver up to this many items.
    """

    scores_ = _Deferred()
    coef_ = _Deferred()
    annotators_ = _Deferred()
    tie_params_ = _Deferred()
    std_error_method_ = _Deferred()
    _factor = _Deferred()
    _free = _Deferred()

    def __init__(self, link: str = "logit", ties: str = "half", both_bad: str = "tie",
                 position_effect: bool = False, covariates=None,
                 annotator_reliability: bool = False, l2: float = 0.0, annotator_l2: float = 1.0,
                 anchor=None, anchor_score: float = 0.0, elo_base: float = 1000.0,
                 confidence: float = 0.95, solver: str = "auto", dense_limit: int = 4000,
                 tol: float = 1e-12, max_iter: int = 200):
        self.link = link
        self.ties = ties
        self.both_bad = both_bad
        self.position_effect = position_effect
        self.covariates = covariates
        self.annotator_reliability = annotator_reliability
        self.l2 = l2
        self.annotator_l2 = annotator_l2
        self.anchor = anchor
        self.anchor_score = anchor_score
        self.elo_base = elo_base
        self.confidence = confidence
        self.solver = solver
        self.dense_limit = dense_limit
        self.tol = tol
        self.max_iter = max_iter

    # --------------------------------------------------------------- sklearn plumbing
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(BradleyTerry.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._param_names():
                raise ValueError(f"unknown parameter {k!r} for {type(self).__name__}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        defaults = BradleyTerry().get_params() if type(self) is BradleyTerry else type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if defaults.get(k) != v}
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def _check_params(self):
        if self.link not in ("logit", "probit"):
            raise ValueError(f"link must be 'logit' or 'probit', got {self.link!r}")
        if self.ties not in ("half", "drop", "davidson", "rao-kupper"):
            raise ValueError(f"ties must be 'half', 'drop', 'davidson' or 'rao-kupper', got {self.ties!r}")
        if self.both_bad not in ("tie", "drop", "separate"):
            raise ValueError(f"both_bad must be 'tie', 'drop' or 'separate', got {self.both_bad!r}")
        if self.both_bad == "separate" and self.ties not in ("davidson", "rao-kupper"):
            raise ValueError("both_bad='separate' needs a tie model: ties='davidson' or 'rao-kupper'")
        if not (np.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        if not (np.isfinite(self.annotator_l2) and self.annotator_l2 > 0):
            raise ValueError(f"annotator_l2 must be > 0, got {self.annotator_l2!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if self.solver not in ("auto", "dense", "sparse"):
            raise ValueError(f"solver must be 'auto', 'dense' or 'sparse', got {self.solver!r}")

    # --------------------------------------------------------------- data
    def _counts(self, pairs: PairCounts, wins=None, losses=None, ties=None, both_bad=None):
        w = pairs.wins if wins is None else wins
        lo = pairs.losses if losses is None else losses
        t = pairs.ties if ties is None else ties
        b = pairs.both_bad if both_bad is None else both_bad
        if self.both_bad == "drop" or (np.ndim(b) == 0 and b == 0):
            return w, lo, t
        if np.ndim(t) == 0 and t == 0:
            return w, lo, b
        return w, lo, t + b

    def _aggregate(self, data, item_a, item_b, label, shown_left, annotator, fitted: bool):
        return aggregate(
            data, item_a, item_b, label,
            shown_left=shown_left if self.position_effect else None,
            annotator=annotator if self.annotator_reliability else None,
            covariates=self.covariates,
            items=self.items_ if fitted else None,
            annotators=(self._annotator_labels
                        if fitted and self.annotator_reliability else None),
        )

    # --------------------------------------------------------------- fit
    def fit(self, data, item_a: str = "model_a", item_b: str = "model_b", label: str = "label",
            shown_left: str = "shown_left", annotator: str = "annotator_id"):
        """Fit on a workbench ``Version`` or a polars/pandas comparisons frame; returns self."""
        with solvers.one_blas_thread():
            return self._fit(data, item_a, item_b, label, shown_left, annotator)

    def _fit(self, data, item_a, item_b, label, shown_left, annotator):
        self._check_params()
        pairs, version_hash = self._aggregate(data, item_a, item_b, label, shown_left, annotator,
                                              fitted=False)
        counts = self._counts(pairs)
        outcome = make_outcome(self.link, self.ties)
        n_decisive = float(np.sum(counts[0]) + np.sum(counts[1]))
        n_ties = float(np.sum(counts[2]))
        if n_decisive == 0:
            raise NoFiniteMLEError("every comparison is a tie (or dropped): the scores are not "
                                   "identified")
        if self.ties in ("davidson", "rao-kupper") and n_ties == 0:
            raise NoFiniteMLEError(
                f"no ties in the data: the {self.ties} tie parameter has no finite estimate; "
                "use ties='half' or ties='drop'")
        if self.position_effect and not np.any(pairs.position):
            raise ValueError(f"position_effect=True but column {shown_left!r} is null in every "
                             "comparison")
        if pairs.covariates is not None:
            zero = [c for c, col in zip(pairs.covariate_names, pairs.covariates.T) if not np.any(col)]
            if zero:
                raise ValueError(f"covariate(s) {zero} are zero in every comparison: their "
                                 "coefficients are not identified; leave them out")
        anchor_idx = None
        if self.anchor is not None:
            matches = np.flatnonzero(pairs.items.cast(pl.String) == str(self.anchor))
            if not len(matches):
                raise ValueError(f"anchor item {self.anchor!r} is not among the fitted items")
            anchor_idx = int(matches[0])
        if self.l2 == 0:
            check_identifiable(pairs, ties_inform=self.ties != "drop")
        reference = None if self.l2 > 0 else (anchor_idx if anchor_idx is not None else 0)
        obj = solvers.Objective(
            pairs.first, pairs.second, counts, outcome, K=pairs.n_items, Z=pairs.design(),
            annotator=pairs.annotator, M=pairs.n_annotators, l2=self.l2,
            annotator_l2=self.annotator_l2, reference=reference, first_runs=pairs.first_runs)
        method = self.solver
        if method == "auto":
            method = "dense" if pairs.n_items <= self.dense_limit else "sparse"
        phi0 = None
        if obj.layout.M:
            # start the reliabilities at 1 from the plain model's optimum
            plain = solvers.Objective(pairs.first, pairs.second, counts, outcome,
                                      K=pairs.n_items, Z=pairs.design(), l2=self.l2,
                                      reference=reference)
            run = solvers.newton_dense if method == "dense" else solvers.newton_cg
            base = run(plain, tol=1e-8, max_iter=self.max_iter).phi
            phi0 = obj.initial()
            K, q = obj.layout.K, obj.layout.q
            phi0[:K + q] = base[:K + q]
            phi0[obj.layout.size - obj.layout.m:] = base[K + q:]
        run = solvers.newton_dense if method == "dense" else solvers.newton_cg
        result = run(obj, phi0, tol=self.tol, max_iter=self.max_iter)
        if not result.converged:
            warnings.warn(f"{type(self).__name__}: the solver stopped after {result.iterations} "
                          "iterations without meeting the tolerance", RuntimeWarning, stacklevel=3)
        self._obj = obj
        self._pairs = pairs
        self._outcome = outcome
        self._method = method
        self._anchor_idx = anchor_idx
        self._reference = reference
        self.params_ = result.phi
        self.items_ = pairs.items.to_list()
        self.n_items_ = pairs.n_items
        self.n_comparisons_ = pairs.n_comparisons
        self.n_pairs_ = pairs.n_rows
        self.fitted_on_ = version_hash
        self.n_iter_ = result.iterations
        self.converged_ = result.converged
        self.solver_ = result.method
        tot_t = float(np.sum(pairs.ties))
        tot_b = float(np.sum(pairs.both_bad))
        self.both_bad_share_ = (tot_b / (tot_t + tot_b)) if self.both_bad == "separate" and tot_t + tot_b else None
        # the solver's objective is -loglik + prior penalty at result.phi: no extra pass
        self.log_likelihood_ = (-(result.value - float(obj._penalty(result.phi)))
                                + self._split_loglik(tot_t, tot_b))
        self.objective_ = result.value
        self._finish(obj, result, pairs)
        return self

    def _split_loglik(self, t, b) -> float:
        if self.both_bad != "separate" or t + b == 0:
            return 0.0
        pi = b / (t + b)
        return (t * math.log1p(-pi) if t else 0.0) + (b * math.log(pi) if b else 0.0)

    def _normalizer(self, K):
        """Matrix-free map from solved scores to reported scores (centred or anchored)."""
        if self._anchor_idx is not None:
            a = self._anchor_idx
            return lambda s: s - s[a] + self.anchor_score
        if self._reference is not None:
            return lambda s: s - np.mean(s, axis=0)
        return lambda s: s

    def _finish(self, obj, result, pairs):
        """Keep what the standard errors need; :meth:`_materialize` computes them on first use."""
        for name in (*self._DEFERRED, "_hessian"):
            self.__dict__.pop(name, None)
        self._boot_table = None  # bootstrap columns waiting for the scores_ table
        self._covariance = None
        self.position_effect_ = float(result.phi[obj.layout.slices()[1]][0]) if self.position_effect else None
        self._annotator_labels = pairs.annotators.to_list() if obj.layout.M else None
        self._pending = (obj, result, pairs)

    def _hessian_factor(self):
        """Cholesky factor of the Hessian at the optimum (dense solver; None for the sparse solver
        or a singular Hessian), made once per fit by whichever asks first: the standard errors,
        or :meth:`bootstrap`, which needs only the factor."""
        if self._method != "dense":
            return None
        if "_hessian" not in self.__dict__:
            obj, result, _ = self._pending
            # the solver's last pass computed the pieces at the optimum (unless it ended on a
            # value-only step)
            pieces = getattr(result, "pieces", None) or obj.derivatives(result.phi, "none")
            try:
                factor = solvers.cholesky(obj.assemble_dense(pieces, obj.free_mask()))
            except (np.linalg.LinAlgError, sla.LinAlgError):
                factor = None
            self.__dict__["_hessian"] = factor
        return self.__dict__["_hessian"]

    def _materialize(self):
        obj, result, pairs = self._pending
        with solvers.one_blas_thread():
            self._standard_errors(obj, result, pairs)
        self._pending = None

    def _standard_errors(self, obj, result, pairs):
        K = obj.layout.K
        ss, sb, st, se = obj.layout.slices()
        phi = result.phi
        normalize = self._normalizer(K)
        scores = normalize(phi[ss])
        free = obj.free_mask()
        z = norm.ppf(0.5 + self.confidence / 2.0)
        self._free = free
        var_all = None
        if self._method == "dense":
            try:
                factor = self._hessian_factor()
                if factor is None:
                    raise np.linalg.LinAlgError("the Hessian is not positive definite")
                # diag(H^-1) from the triangular inverse (half the work of the full inverse)
                var_all = solvers.inverse_diagonal(factor)
                if not np.all(np.isfinite(var_all)):
                    raise np.linalg.LinAlgError("non-finite inverse")
                var_all[~free] = 0.0
                self._factor = factor
            except (np.linalg.LinAlgError, sla.LinAlgError):
                warnings.warn("the Hessian at the optimum is singular: no standard errors",
                              RuntimeWarning, stacklevel=4)
                self._factor = None
                var_all = None
        else:
            self._factor = None
        if var_all is not None:
            P = obj.layout.size

            def cov_times(v):  # H^-1 v restricted to the free coordinates
                v = np.where(free, v, 0.0)
                out = solvers.cho_solve(self._factor, v)
                out[~free] = 0.0
                return out

            diag_s = var_all[ss]
            if self._anchor_idx is not None:
                a = self._anchor_idx
                e = np.zeros(P)
                e[a] = 1.0
                col_a = cov_times(e)[ss]
                var_s = diag_s + col_a[a] - 2.0 * col_a
            elif self._reference is not None:
                e = np.zeros(P)
                e[ss] = 1.0
                mean_row = cov_times(e)[ss] / K
                var_s = diag_s - 2.0 * mean_row + mean_row.mean()
            else:
                var_s = diag_s
            self.std_error_method_ = "fisher"
        else:
            # large problems: conditional standard errors 1/sqrt(H_ii) (a lower bound)
            pieces = getattr(result, "pieces", None) or obj.derivatives(phi, "sparse")
            var_s = 1.0 / pieces["diag_s"]
            E = pieces["extra"].shape[0]
            var_all = np.zeros(obj.layout.size)
            var_all[:K] = var_s
            if E:
                var_all[K:] = np.diag(np.linalg.pinv(pieces["extra"]))
            self.std_error_method_ = "conditional"
        se_s = np.sqrt(np.maximum(var_s, 0.0))
        factor = _elo_factor(self.link)
        table = pairs.item_table().with_columns(
            pl.Series("score", scores),
            pl.Series("std_error", se_s),
            pl.Series("ci_low", scores - z * se_s),
            pl.Series("ci_high", scores + z * se_s),
            pl.Series("elo", self.elo_base + factor * (scores - (self.anchor_score if self._anchor_idx is not None else 0.0))),
            pl.Series("elo_std_error", factor * se_s),
        )
        table = table.sort("score", descending=True).with_columns(
            pl.int_range(1, pl.len() + 1).alias("rank"))
        self.scores_ = table.select(["rank", "item", "score", "std_error", "ci_low", "ci_high", "elo",
                                     "elo_std_error", "comparisons", "wins", "losses", "ties",
                                     "both_bad"])
        if getattr(self, "_boot_table", None) is not None:  # a bootstrap ran before this table
            self.scores_ = self._with_bootstrap(self.scores_, self._boot_table)
            self._boot_table = None
        se_all = np.sqrt(np.maximum(var_all, 0.0))
        # extra parameters
        names, values, errs = [], [], []
        col = 0
        if self.position_effect:
            names.append("position_left")
            col += 1
        names += list(self.covariates or [])
        for i, name in enumerate(names):
            values.append(phi[sb][i])
            errs.append(se_all[sb][i])
        self.coef_ = pl.DataFrame({"name": names, "coef": np.array(values, dtype=float),
                                   "std_error": np.array(errs, dtype=float)})
        if obj.layout.M:
            ann_counts = np.bincount(pairs.annotator, pairs.wins + pairs.losses + pairs.ties + pairs.both_bad,
                                     obj.layout.M)
            tau = phi[st]
            tse = se_all[st]
            self.annotators_ = pl.DataFrame({
                "annotator": pairs.annotators,
                "reliability": tau,
                "std_error": tse,
                "ci_low": tau - z * tse,
                "ci_high": tau + z * tse,
                "comparisons": ann_counts.astype(np.int64),
            }).sort("reliability")
        else:
            self.annotators_ = None
        self.tie_params_ = None
        if obj.layout.m:
            eta = float(phi[se][0])
            eta_se = float(se_all[se][0])
            if self.ties == "davidson":
                self.tie_params_ = {"alpha": eta, "alpha_std_error": eta_se, "nu": math.exp(eta)}
            else:
                self.tie_params_ = {"eta": eta, "eta_std_error": eta_se, "theta": math.exp(eta)}
            if self.both_bad_share_ is not None:
                self.tie_params_["both_bad_share"] = self.both_bad_share_

    @property
    def covariance_(self):
        """Covariance of the solved parameters (inverse Fisher information at the optimum; the
        pinned reference item has zero rows), computed on first use; None for the sparse solver
        or a loaded model."""
        if getattr(self, "_covariance", None) is None and getattr(self, "_factor", None) is not None:
            cov = solvers.cho_inverse(self._factor)
            cov[~self._free, :] = 0.0
            cov[:, ~self._free] = 0.0
            self._covariance = cov
        return getattr(self, "_covariance", None)

    # --------------------------------------------------------------- prediction
    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def _layout(self):
        K = len(self.items_)
        q = (1 if self.position_effect else 0) + len(self.covariates or [])
        M = 0 if self._annotator_labels is None else len(self._annotator_order)
        m = make_outcome(self.link, self.ties).n_params
        return solvers.Layout(K, q, M, m)

    def _predict_d(self, first, second, position=None, covariates=None, annotator=None):
        lay = self._layout()
        ss, sb, st, se = lay.slices()
        phi = self.params_
        s = phi[ss]
        u = s[first] - s[second]
        beta = phi[sb]
        col = 0
        if self.position_effect:
            if position is not None:
                u = u + beta[0] * position
            col = 1
        if self.covariates:
            if covariates is None:
                raise ValueError(f"this model has covariates {self.covariates}: pass their values")
            u = u + np.asarray(covariates, dtype=float) @ beta[col:]
        if lay.M and annotator is not None:
            tau = np.append(phi[st], 1.0)  # unseen annotators (-1) get the prior mean 1
            return tau[annotator] * u
        return u

    def _item_index(self, values):
        lookup = self._item_lookup()
        out = []
        for v in values:
            key = v if v in lookup else str(v)
            if key not in lookup:
                raise ValueError(f"unknown item {v!r}; the model knows {len(lookup)} items")
            out.append(lookup[key])
        return np.array(out, dtype=np.int64)

    def _item_lookup(self):
        if getattr(self, "_lookup", None) is None or len(self._lookup) != len(self.items_):
            self._lookup = {v: i for i, v in enumerate(self.items_)}
            self._lookup.update({str(v): i for i, v in enumerate(self.items_)})
        return self._lookup

    def predict_proba(self, a, b, shown_left=None, covariates=None):
        """``[P(a preferred), P(tie), P(b preferred)]`` (and ``P(both bad)`` with
        ``both_bad="separate"``), one row per pair; a single pair gives a 1-d array.

        ``shown_left`` ("a"/"b", scalar or array) applies the position effect; without it a
        position model averages over both display orders.
        """
        self._check_fitted()
        scalar = np.ndim(a) == 0 and np.ndim(b) == 0
        a_idx = self._item_index(np.atleast_1d(np.asarray(a, dtype=object)))
        b_idx = self._item_index(np.atleast_1d(np.asarray(b, dtype=object)))
        a_idx, b_idx = np.broadcast_arrays(a_idx, b_idx)
        outcome = make_outcome(self.link, self.ties)
        _, _, _, se = self._layout().slices()
        eta = self.params_[se]
        cov = None if covariates is None else np.atleast_2d(np.asarray(covariates, dtype=float))
        if self.position_effect and shown_left is None:
            probs = []
            for side in (1.0, -1.0):
                d = self._predict_d(a_idx, b_idx, np.full(len(a_idx), side), cov)
                probs.append(np.column_stack(outcome.probabilities(d, eta)))
            p = 0.5 * (probs[0] + probs[1])
        else:
            pos = None
            if shown_left is not None:
                sl = np.atleast_1d(np.asarray(shown_left, dtype=object))
                pos = np.where(sl == "a", 1.0, np.where(sl == "b", -1.0, 0.0))
            d = self._predict_d(a_idx, b_idx, pos, cov)
            p = np.column_stack(outcome.probabilities(d, eta))
        if self.both_bad == "separate":
            pi = self.both_bad_share_ or 0.0
            p = np.column_stack([p[:, 0], p[:, 1] * (1 - pi), p[:, 2], p[:, 1] * pi])
        return p[0] if scalar else p

    def predict_comparisons(self, data, item_a: str = "model_a", item_b: str = "model_b",
                            shown_left: str = "shown_left", annotator: str = "annotator_id"
                            ) -> pl.DataFrame:
        """Outcome probabilities for every row of a comparisons table, in row order:
        ``p_a, p_tie, p_b`` (and ``p_both_bad`` with ``both_bad="separate"``), using the rows'
        display side, annotator (unseen ones get reliability 1) and covariates."""
        from .data import as_frame, item_codes, position_codes

        self._check_fitted()
        frame, _ = as_frame(data)
        first, second, _ = item_codes(frame, item_a, item_b, self.items_)
        pos = None
        if self.position_effect and shown_left in frame.columns:
            pos = position_codes(frame, shown_left).astype(float)
        cov = None
        if self.covariates:
            cov = frame.select(self.covariates).cast(pl.Float64).to_numpy()
        ann = None
        if self.annotator_reliability and annotator in frame.columns:
            lookup = {v: i for i, v in enumerate(self._annotator_labels)}
            ann = np.array([lookup.get(v, -1) for v in
                            frame[annotator].cast(pl.String).fill_null("(unknown)").to_list()],
                           dtype=np.int64)
        outcome = make_outcome(self.link, self.ties)
        _, _, _, se = self._layout().slices()
        eta = self.params_[se]
        if self.position_effect and pos is None:
            p = 0.5 * sum(np.column_stack(outcome.probabilities(
                self._predict_d(first, second, np.full(len(first), side), cov, ann), eta))
                for side in (1.0, -1.0))
        else:
            p = np.column_stack(outcome.probabilities(
                self._predict_d(first, second, pos, cov, ann), eta))
        out = {"p_a": p[:, 0], "p_tie": p[:, 1], "p_b": p[:, 2]}
        if self.both_bad == "separate":
            pi = self.both_bad_share_ or 0.0
            out["p_both_bad"] = p[:, 1] * pi
            out["p_tie"] = p[:, 1] * (1 - pi)
        return pl.DataFrame(out)

    def log_likelihood(self, data, item_a: str = "model_a", item_b: str = "model_b",
                       label: str = "label", shown_left: str = "shown_left",
                       annotator: str = "annotator_id") -> float:
        """Log-likelihood of (held-out) comparisons under the fitted parameters."""
        self._check_fitted()
        pairs, _ = self._aggregate(data, item_a, item_b, label, shown_left, annotator, fitted=True)
        counts = self._counts(pairs)
        _, _, _, se = self._layout().slices()
        d = self._predict_d(pairs.first, pairs.second, pairs.position, pairs.covariates,
                            pairs.annotator)
        ll = float(np.sum(make_outcome(self.link, self.ties).loglik(d, self.params_[se], counts)))
        if self.both_bad == "separate":
            pi = self.both_bad_share_ or 0.0
            t, b = float(np.sum(pairs.ties)), float(np.sum(pairs.both_bad))
            ll += (t * math.log1p(-pi) if t else 0.0) + (b * math.log(pi) if b else -0.0)
        return ll

    def score(self, data, **columns) -> float:
        """Mean log-likelihood per comparison (higher is better)."""
        frame_len = self._n_rows(data)
        return self.log_likelihood(data, **columns) / max(frame_len, 1)

    @staticmethod
    def _n_rows(data):
        from .data import as_frame

        return as_frame(data)[0].height

    @property
    def _annotator_order(self):
        return self._annotator_labels

    # --------------------------------------------------------------- bootstrap
    def bootstrap(self, n_rounds: int = 100, seed=None, *, method: str = "exact",
                  tol: float = 1e-6, max_cells: int = 60_000_000):
        """Poisson-bootstrap all rounds at once; adds ``bootstrap_*`` columns to ``scores_``.

        Each round reweights the aggregated cell counts (exact Poisson draws).  ``method=
        "exact"`` solves every round to convergence - the error left predicted below ``tol`` in
        every score and the objective gap below the fit's own tolerance (``tol`` of the
        estimator) - by chord-Newton steps with Anderson acceleration from the full-data optimum
        with the full-data Hessian's factorization, all rounds in one batch of sparse matrix
        products; its rounds equal independent refits (tests/choice/test_fast_paths.py).  Plain
        logit Bradley-Terry keeps the rounds' counts as 1-2 byte integers and passes over the
        rows in compiled loops (:class:`solvers.PlainRounds`, :mod:`rm.choice.kernels`; the first
        bootstrap in a process loads them: about 1 s).  ``"one-step"`` takes a single
        Newton step per round (the estimating-function bootstrap, error second order in the
        sampling noise, no exp per round).  ``max_cells`` bounds rows x rounds per batch
        (memory).  Rounds whose resample has no finite optimum are dropped
        (``bootstrap_failed_``).
        """
        if method not in ("exact", "one-step"):
            raise ValueError(f"method must be 'exact' or 'one-step', got {method!r}")
        with solvers.one_blas_thread():
            return self._bootstrap(n_rounds, seed, method, tol, max_cells)

    def _bootstrap(self, n_rounds, seed, method, tol, max_cells):
        self._check_fitted()
        if not hasattr(self, "_obj"):
            raise NotFittedError("bootstrap needs the training data: refit after load()")
        if n_rounds < 2:
            raise ValueError("n_rounds must be at least 2")
        rng = np.random.default_rng(seed)
        obj, pairs = self._obj, self._pairs
        free = obj.free_mask()
        R = pairs.n_rows
        # plain logit Bradley-Terry keeps the rounds' counts as small integers (2-4 bytes a
        # cell); the general path holds several float64 (R, B) matrices (~50 bytes a cell)
        top = max(float(np.max(c, initial=0.0)) for c in
                  (pairs.wins, pairs.losses, pairs.ties, pairs.both_bad))
        compact = obj._plain and top <= 10_000
        chunk = max(1, min(n_rounds, (max_cells if compact else max_cells // 6) // max(R, 1)))
        normalize = self._normalizer(obj.layout.K)
        ss, _, _, _ = obj.layout.slices()
        # means up to 32 draw from the table (at most 177): one byte a cell
        dtype = (np.uint8 if top <= TABLE_MAX_MEAN else np.uint32) if compact else np.float64

        sources = {"wins": pairs.wins, "losses": pairs.losses}
        for name in ("ties", "both_bad"):
            if getattr(pairs, name).any():
                sources[name] = getattr(pairs, name)
        # compact rounds are drawn with their rows in PlainRounds' order (stripes)
        order = solvers.PlainRounds.row_order(R) if compact else None
        if order is not None:
            sources = {name: c[order] for name, c in sources.items()}

        # the Hessian's factor and the draws' plans (once for all batches) side by side
        factor, plans = solvers.parallel_map(lambda task: task(), [
            self._hessian_factor,
            lambda: {name: poisson_plan(c) for name, c in sources.items()}])
        if factor is not None:
            # the rounds' solves in single precision: a chord step only needs H0^-1 to ~1e-6
            # (its fixed point is each round's optimum whatever the matrix), at half the cost
            factor32 = solvers.single_factor(factor)

            def solve(G):
                out = solvers.cho_solve(factor32, np.where(free[:, None], G, 0.0))
                out[~free] = 0.0
                return out
        else:
            H = solvers.SparseHessian(obj, obj.derivatives(self.params_, "sparse"))

            def solve(G):
                return solvers.pcg(H, G, free, rtol=1e-10)[0]

        def rounds(rng_part, B):
            """``B`` rounds drawn from ``rng_part`` and solved: (samples (B, K), ok (B,))."""
            draws = {name: poisson_counts(c, B, rng_part, dtype, plans[name])
                     for name, c in sources.items()}
            w, lo = draws["wins"], draws["losses"]
            t, bb = draws.get("ties", 0.0), draws.get("both_bad", 0.0)
            counts = self._counts(pairs, w, lo, t, bb)
            if compact:
                counts = self._compact_rounds(obj, counts, order, max_mean=top)
            if method == "exact":
                phi, ok = solvers.chord_batch(obj, self.params_, counts, solve, tol=tol,
                                              ftol=self.tol, fscale=self.objective_)
            else:
                phi, ok = solvers.one_step_batch(obj, self.params_, counts, solve)
            return normalize(phi[ss]).T, ok

        samples, ok_all = [], []
        done = 0
        while done < n_rounds:
            B = min(chunk, n_rounds - done)
            # the batch's rounds in BOOTSTRAP_STREAMS parts, each with its own random stream
            # (spawned from ``seed``) and solved on its own thread: the same rounds for a seed
            # whether the parts run side by side or one after the other
            sizes = [n for n in np.diff(np.linspace(0, B, BOOTSTRAP_STREAMS + 1).round()).astype(int)
                     if n > 0]
            parts = list(zip(rng.spawn(len(sizes)), sizes))
            for part_samples, part_ok in solvers.parallel_map(lambda a: rounds(*a), parts):
                samples.append(part_samples)
                ok_all.append(part_ok)
            done += B
        samples = np.vstack(samples)
        ok = np.concatenate(ok_all)
        self.bootstrap_failed_ = int((~ok).sum())
        if self.bootstrap_failed_:
            warnings.warn(f"{self.bootstrap_failed_} of {n_rounds} bootstrap rounds had no finite "
                          "optimum (a resample disconnected the graph) and were dropped; "
                          "consider l2=...", RuntimeWarning, stacklevel=3)
        good = samples[ok]
        if len(good) < 2:
            raise NoFiniteMLEError("fewer than 2 bootstrap rounds converged")
        self.bootstrap_samples_ = good
        self.bootstrap_method_ = method
        alpha = (1 - self.confidence) / 2
        lo_q, hi_q = np.quantile(good, [alpha, 1 - alpha], axis=0)
        boot = pl.DataFrame({
            "item": pairs.items.alias("item"),
            "bootstrap_std_error": good.std(axis=0, ddof=1),
            "bootstrap_ci_low": lo_q,
            "bootstrap_ci_high": hi_q,
        })
        if "scores_" in self.__dict__:
            self.scores_ = self._with_bootstrap(self.scores_, boot)
        else:  # joined when the table is made (the standard errors are not computed yet)
            self._boot_table = boot
        return self

    @staticmethod
    def _with_bootstrap(table: pl.DataFrame, boot: pl.DataFrame) -> pl.DataFrame:
        base = table.drop([c for c in boot.columns if c != "item" and c in table.columns])
        return base.join(boot.with_columns(pl.col("item").cast(table["item"].dtype)), on="item",
                         how="left", maintain_order="left")

    @staticmethod
    def _compact_rounds(obj, counts, order=None, max_mean=None):
        """Rounds' (wins, losses, ties) draws as :class:`solvers.PlainRounds`: counts doubled when
        ties count half, so they stay integers; ``order``: the rows' order in the draws (see
        :meth:`solvers.PlainRounds.row_order`); ``max_mean``: the largest count drawn from (it
        bounds the draws)."""
        w, lo, t = counts
        wide = np.uint16 if w.dtype == np.uint8 else np.uint32
        if obj.outcome.tie_weight and not (np.ndim(t) == 0 and t == 0):
            scale = int(round(1.0 / obj.outcome.tie_weight))  # 2: prepared w + t/2 -> 2w + t
            wins = np.multiply(w, scale, dtype=wide)
            wins += t
            totals = np.add(w, lo, dtype=wide)
            totals += t
            totals *= scale
        else:
            scale = 1
            # one byte a cell when every sum fits (draws of small means do): each chord step
            # reads the totals, and half the bytes is a faster pass
            narrow = w.dtype == np.uint8 and lo.dtype == np.uint8 and (
                (max_mean is not None and max_mean <= TABLE_MAX_MEAN
                 and 2 * max_draw(max_mean) <= 255)
                or int(w.max(initial=0)) + int(lo.max(initial=0)) <= 255)
            wins, totals = w, np.add(w, lo, dtype=np.uint8 if narrow else wide)
        return solvers.PlainRounds(obj, wins, totals, scale=scale, order=order)

    # --------------------------------------------------------------- persistence
    def save(self, path) -> Path:
        """Write the fitted model to one ``.npz`` file (atomic: all or nothing)."""
        self._check_fitted()
        path = Path(path)
        buf = io.BytesIO()
        self.scores_.write_ipc(buf)
        meta = {
            "format": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self.get_params(),
            "items": [str(x) for x in self.items_],
            "items_numeric": not isinstance(self.items_[0], str),
            "fitted_on": self.fitted_on_,
            "log_likelihood": self.log_likelihood_,
            "objective": self.objective_,
            "n_comparisons": self.n_comparisons_,
            "n_iter": self.n_iter_,
            "solver": self.solver_,
            "std_error_method": self.std_error_method_,
            "position_effect": self.position_effect_,
            "tie_params": self.tie_params_,
            "both_bad_share": self.both_bad_share_,
            "anchor_idx": self._anchor_idx,
            "reference": self._reference,
            "method": self._method,
        }
        arrays = {"params": self.params_, "scores": np.frombuffer(buf.getvalue(), dtype=np.uint8),
                  "meta": np.frombuffer(json.dumps(meta, default=_json_default).encode(), dtype=np.uint8)}
        buf = io.BytesIO()
        self.coef_.write_ipc(buf)
        arrays["coef"] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        if self.annotators_ is not None:
            buf = io.BytesIO()
            self.annotators_.write_ipc(buf)
            arrays["annotators"] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
            arrays["annotator_order"] = np.frombuffer(
                json.dumps(list(self._annotator_labels)).encode(), dtype=np.uint8)
        return save_npz_atomically(path, **arrays)

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save` (returns the saved subclass)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                files = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a saved choice model: {exc}") from None
        if "meta" not in files or "params" not in files:
            raise ValueError(f"{path} is not a saved choice model (no metadata)")
        meta = json.loads(files["meta"].tobytes().decode())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format {meta.get('format')!r}")
        klass = MODEL_CLASSES.get(meta["class"])
        if klass is None:
            raise ValueError(f"{path}: unknown model class {meta['class']!r}")
        model = klass.__new__(klass)
        BradleyTerry.__init__(model, **meta["params"])
        model.params_ = files["params"]
        model.scores_ = pl.read_ipc(io.BytesIO(files["scores"].tobytes()))
        model.coef_ = pl.read_ipc(io.BytesIO(files["coef"].tobytes()))
        items = meta["items"]
        if meta["items_numeric"]:
            items = [int(x) if float(x).is_integer() else float(x) for x in items]
        model.items_ = items
        model.n_items_ = len(items)
        model.fitted_on_ = meta["fitted_on"]
        model.log_likelihood_ = meta["log_likelihood"]
        model.objective_ = meta["objective"]
        model.n_comparisons_ = meta["n_comparisons"]
        model.n_iter_ = meta["n_iter"]
        model.solver_ = meta["solver"]
        model.std_error_method_ = meta["std_error_method"]
        model.position_effect_ = meta["position_effect"]
        model.tie_params_ = meta["tie_params"]
        model.both_bad_share_ = meta["both_bad_share"]
        model._anchor_idx = meta["anchor_idx"]
        model._reference = meta["reference"]
        model._method = meta["method"]
        model.converged_ = True
        if "annotators" in files:
            model.annotators_ = pl.read_ipc(io.BytesIO(files["annotators"].tobytes()))
            model._annotator_labels = json.loads(files["annotator_order"].tobytes().decode())
        else:
            model.annotators_ = None
            model._annotator_labels = None
        return model


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (list, tuple)):
        return list(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")


class Thurstone(BradleyTerry):
    """Thurstone case V: ``BradleyTerry(link="probit")``."""

    def __init__(self, **params):
        super().__init__(**{"link": "probit", **params})


class Davidson(BradleyTerry):
    """Bradley-Terry with Davidson (1970) ties: ``BradleyTerry(ties="davidson")``."""

    def __init__(self, **params):
        super().__init__(**{"ties": "davidson", **params})


class RaoKupper(BradleyTerry):
    """Bradley-Terry with Rao-Kupper (1967) threshold ties: ``BradleyTerry(ties="rao-kupper")``."""

    def __init__(self, **params):
        super().__init__(**{"ties": "rao-kupper", **params})


class AnnotatorBradleyTerry(BradleyTerry):
    """Bradley-Terry with a reliability per annotator: ``BradleyTerry(annotator_reliability=True)``."""

    def __init__(self, **params):
        super().__init__(**{"annotator_reliability": True, **params})


MODEL_CLASSES = {c.__name__: c for c in (BradleyTerry, Thurstone, Davidson, RaoKupper,
                                         AnnotatorBradleyTerry)}


def style_features(data, response_a: str = "response_a", response_b: str = "response_b",
                   prefix: str = "style_") -> pl.DataFrame:
    """Add arena-style-control covariates: normalised differences ``(a - b) / (a + b)`` of the
    response length (characters), markdown headers, list items and bold spans."""
    from .data import as_frame

    frame, _ = as_frame(data)
    feats = {
        "length": lambda c: c.str.len_chars(),
        "headers": lambda c: c.str.count_matches(r"(?m)^#{1,6}\s"),
        "lists": lambda c: c.str.count_matches(r"(?m)^\s*(?:[-*+]|\d+\.)\s"),
        "bold": lambda c: c.str.count_matches(r"\*\*[^*\n]+\*\*|__[^_\n]+__"),
    }
    exprs = []
    for name, fn in feats.items():
        fa = fn(pl.col(response_a).fill_null("")).cast(pl.Float64)
        fb = fn(pl.col(response_b).fill_null("")).cast(pl.Float64)
        exprs.append(pl.when(fa + fb > 0).then((fa - fb) / (fa + fb)).otherwise(0.0)
                     .alias(prefix + name))
    return frame.with_columns(exprs)
