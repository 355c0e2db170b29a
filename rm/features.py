"""Feature reward model: r(x, y) = w . phi(x, y) on a frozen encoder, fitted as a conditional logit.

Bradley-Terry (1952) on feature differences, d_i = phi(x_i, y_chosen) - phi(x_i, y_rejected):

    P(chosen > rejected) = sigmoid(w . d_i)
    J_BT(w) = 0.5 ||w||^2 + C * sum_i -log sigmoid(w . d_i)

which is an L2 logistic regression with no intercept (each pair enters as (d, 1) and (-d, 0)
with weight 1/2, the same objective for every orientation), fitted with scikit-learn.

Ties use Davidson (1970): with s = w . d and nu > 0,

    P(win) = e^{s/2} / (e^{s/2} + e^{-s/2} + nu),   P(tie) = nu / (e^{s/2} + e^{-s/2} + nu)
    J_D(w, log nu) = 0.5 ||w||^2 + C * sum_i -log P_i

which scikit-learn has no estimator for; it is minimised with scipy L-BFGS (analytic gradient)
from the scikit-learn Bradley-Terry solution.

phi(x, y): the response embedding e(y), the prompt-response product e(x) * e(y) (for MiniLM;
cosine-like match features), and log(1 + characters of y). The prompt alone cancels in d.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from rm.pairs import PreferencePairs, check_texts, preference_pairs

METADATA_FILE = "workbench_reward_model.json"
WEIGHTS_FILE = "feature_reward_model.safetensors"


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def bt_objective(w: np.ndarray, d, C: float) -> tuple[float, np.ndarray]:
    """J_BT(w) = 0.5||w||^2 + C sum_i -log sigmoid(w.d_i) and its gradient (d: pairs x features)."""
    s = d @ w
    loss = 0.5 * w @ w + C * np.logaddexp(0.0, -s).sum()
    grad = w - C * (d.T @ _sigmoid(-s))
    return float(loss), np.asarray(grad).ravel()


def davidson_objective(theta: np.ndarray, d, is_tie: np.ndarray, C: float) -> tuple[float, np.ndarray]:
    """J_D(w, log nu) (see module docstring) and its gradient; theta = [w..., log nu]."""
    w, log_nu = theta[:-1], theta[-1]
    s = d @ w
    # log denominator: log(e^{s/2} + e^{-s/2} + nu), computed stably
    stack = np.stack([0.5 * s, -0.5 * s, np.full_like(s, log_nu)])
    log_den = np.logaddexp.reduce(stack, axis=0)
    log_num = np.where(is_tie, log_nu, 0.5 * s)
    loss = 0.5 * w @ w + C * (log_den - log_num).sum()
    p = np.exp(stack - log_den)  # softmax weights of the three terms
    dlogden_ds = 0.5 * (p[0] - p[1])
    dlognum_ds = np.where(is_tie, 0.0, 0.5)
    grad_w = w + C * (d.T @ (dlogden_ds - dlognum_ds))
    grad_lognu = C * (p[2] - is_tie.astype(float)).sum()
    return float(loss), np.append(np.asarray(grad_w).ravel(), grad_lognu)


class FeatureRewardModel(BaseEstimator):
    """Linear reward on frozen features, fitted as a Bradley-Terry / Davidson conditional logit.

    Parameters
    ----------
    encoder: "tfidf" (hashing TF-IDF, no weights) or "minilm" (all-MiniLM-L6-v2, optional extra).
    C: inverse L2 strength (as in scikit-learn), or "cv": chosen from `Cs` by `cv_folds`-fold
       cross-validated log loss over the training pairs (folds split pairs, never a pair's two
       orientations); the choice is in `C_` and the table in `cv_results_`.
    ties: "davidson" keeps ties and fits nu; "drop" drops them (counted in `counts_`).
    interaction: add the prompt-response product features e(x) * e(y).
    cache_dir: where MiniLM embeddings are cached per content hash (in memory if None).
    """

    def __init__(
        self,
        encoder: str = "tfidf",
        C: float = 1.0,
        ties: str = "davidson",
        interaction: bool = True,
        length_feature: bool = True,
        max_length: int = 256,
        n_features: int = 2**18,
        max_iter: int = 2000,
        cache_dir: str | None = None,
        seed: int = 0,
        Cs: tuple = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
        cv_folds: int = 3,
    ):
        self.encoder = encoder
        self.C = C
        self.ties = ties
        self.interaction = interaction
        self.length_feature = length_feature
        self.max_length = max_length
        self.n_features = n_features
        self.max_iter = max_iter
        self.cache_dir = cache_dir
        self.seed = seed
        self.Cs = Cs
        self.cv_folds = cv_folds

    # ---- features -------------------------------------------------------------------------
    def _make_encoder(self):
        from rm.encoders import HashingTfidfEncoder, MiniLMEncoder

        if self.encoder == "tfidf":
            return HashingTfidfEncoder(n_features=self.n_features)
        if self.encoder == "minilm":
            return MiniLMEncoder(max_length=self.max_length, cache_dir=self.cache_dir)
        raise ValueError(f"unknown encoder {self.encoder!r}; expected 'tfidf' or 'minilm'")

    def features(self, prompts: list[str], responses: list[str]):
        """phi(x, y) for each (prompt, response): sparse for TF-IDF, dense for MiniLM."""
        import scipy.sparse as sp

        enc = self.encoder_
        e_y = enc.encode(responses)
        parts = [e_y]
        if self.interaction:
            e_x = enc.encode(prompts)
            parts.append(e_y.multiply(e_x) if sp.issparse(e_y) else e_y * e_x)
        if self.length_feature:
            length = np.log1p(np.array([len(r) for r in responses], dtype=np.float64))[:, None]
            parts.append(sp.csr_matrix(length) if sp.issparse(e_y) else length)
        if sp.issparse(e_y):
            return sp.hstack(parts, format="csr")
        return np.hstack(parts).astype(np.float64)

    def _pair_differences(self, pairs: PreferencePairs):
        return self.features(pairs.prompts, pairs.chosen) - self.features(pairs.prompts, pairs.rejected)

    # ---- fitting --------------------------------------------------------------------------
    def fit(self, data: Any) -> "FeatureRewardModel":
        """Fit on a workbench `Version` or a comparisons frame (labels a/b/tie/both_bad)."""
        import scipy.sparse as sp
        from scipy.optimize import minimize

        if self.ties not in ("davidson", "drop"):
            raise ValueError("ties must be 'davidson' or 'drop'")
        pairs = data if isinstance(data, PreferencePairs) else preference_pairs(data, keep_ties=self.ties == "davidson")
        self.encoder_ = self._make_encoder()
        if self.encoder == "tfidf":
            self.encoder_.fit(pairs.prompts + pairs.chosen + pairs.rejected)
        d = self._pair_differences(pairs)
        if sp.issparse(d):
            self.scale_ = np.ones(d.shape[1])
        else:
            scale = np.sqrt((d**2).mean(axis=0))
            self.scale_ = np.where(scale > 1e-12, scale, 1.0)
            d = d / self.scale_
        d_win = d[np.flatnonzero(~pairs.is_tie)]
        self.cv_results_ = None
        if isinstance(self.C, str):
            if self.C != "cv":
                raise ValueError("C must be a positive number or 'cv'")
            self.C_ = self._cross_validate_C(d_win)
        else:
            if not self.C > 0:
                raise ValueError("C must be positive")
            self.C_ = float(self.C)
        logit = self._fit_bt(d_win, self.C_)
        w = logit.coef_.ravel().astype(np.float64)
        self.tie_log_nu_ = None
        if pairs.n_ties > 0:
            theta0 = np.append(w, np.log(max(pairs.n_ties, 1) / len(pairs)))
            result = minimize(
                davidson_objective,
                theta0,
                args=(d, pairs.is_tie, self.C_),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": self.max_iter, "gtol": 1e-8},
            )
            w, self.tie_log_nu_ = result.x[:-1], float(result.x[-1])
        self.coef_ = w
        self.n_iter_ = int(np.max(logit.n_iter_))
        self.version_hash_ = pairs.version_hash
        self.counts_ = pairs.counts()
        return self

    def _fit_bt(self, d_win, C: float):
        """scikit-learn L2 logistic regression without intercept = J_BT (module docstring)."""
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        n = d_win.shape[0]
        stacked = sp.vstack([d_win, -d_win]) if sp.issparse(d_win) else np.vstack([d_win, -d_win])
        target = np.r_[np.ones(n), np.zeros(n)]
        logit = LogisticRegression(C=C, fit_intercept=False, solver="lbfgs", max_iter=self.max_iter, tol=1e-8)
        return logit.fit(stacked, target, sample_weight=np.full(2 * n, 0.5))

    def _cross_validate_C(self, d_win) -> float:
        import polars as pl

        n = d_win.shape[0]
        if n < 2 * self.cv_folds:
            raise ValueError(f"C='cv' needs at least {2 * self.cv_folds} decided pairs, got {n}")
        folds = np.random.default_rng(self.seed).permutation(n) % self.cv_folds
        rows = []
        for C in self.Cs:
            losses, accs = [], []
            for k in range(self.cv_folds):
                train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
                w = self._fit_bt(d_win[train], C).coef_.ravel()
                s = np.asarray(d_win[test] @ w).ravel()
                losses.append(np.logaddexp(0.0, -s).mean())
                accs.append((s > 0).mean())
            rows.append({"C": float(C), "cv_log_loss": float(np.mean(losses)), "cv_accuracy": float(np.mean(accs))})
        self.cv_results_ = pl.DataFrame(rows)
        return float(self.cv_results_.sort("cv_log_loss")["C"][0])

    # ---- prediction -----------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise RuntimeError("FeatureRewardModel is not fitted; call fit(data) or load(path) first")

    def reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """r(x, y) = w . phi(x, y) (scaled features), one float per (prompt, response)."""
        self._check_fitted()
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        check_texts(responses, "response")
        if not responses:
            return np.zeros(0)
        phi = self.features(prompts, responses)
        return np.asarray(phi @ (self.coef_ / self.scale_)).ravel()

    def proba(self, prompts, responses_a, responses_b) -> np.ndarray:
        """P(a > b) = sigmoid(r(a) - r(b)) (with ties: the probability of a given no tie)."""
        return _sigmoid(self.reward(prompts, responses_a) - self.reward(prompts, responses_b))

    def proba_outcomes(self, prompts, responses_a, responses_b) -> np.ndarray:
        """(P(a wins), P(tie), P(b wins)) per row under Davidson (tie column 0 without ties)."""
        s = self.reward(prompts, responses_a) - self.reward(prompts, responses_b)
        log_nu = -np.inf if self.tie_log_nu_ is None else self.tie_log_nu_
        logits = np.stack([0.5 * s, np.full_like(s, log_nu), -0.5 * s], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, data: Any) -> np.ndarray:
        """P(response_a > response_b) for each row of a comparisons frame / version."""
        from rm.pairs import proba_on_frame

        return proba_on_frame(self, data)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, metrics: dict | None = None) -> Path:
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef_, "scale": self.scale_}
        arrays.update({f"encoder.{k}": v for k, v in self.encoder_.state().items()})
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / WEIGHTS_FILE))
        meta = {
            "kind": "feature_reward_model",
            "params": self.get_params(),
            "version_hash": self.version_hash_,
            "tie_log_nu": self.tie_log_nu_,
            "C_": self.C_,
            "counts": self.counts_,
            "metrics": metrics or {},
        }
        (path / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureRewardModel":
        from safetensors.numpy import load_file

        path = Path(path)
        meta_file = path / METADATA_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"{path} is not a saved feature reward model (no {METADATA_FILE})")
        meta = json.loads(meta_file.read_text())
        if meta.get("kind") != "feature_reward_model":
            raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a feature_reward_model")
        model = cls(**meta["params"])
        arrays = load_file(str(path / WEIGHTS_FILE))
        model.coef_ = arrays["coef"]
        model.scale_ = arrays["scale"]
        model.encoder_ = model._make_encoder()
        model.encoder_.load_state({k[len("encoder."):]: v for k, v in arrays.items() if k.startswith("encoder.")})
        model.tie_log_nu_ = meta["tie_log_nu"]
        model.C_ = meta.get("C_", model.C)
        model.version_hash_ = meta["version_hash"]
        model.counts_ = meta["counts"]
        model.metrics_ = meta.get("metrics", {})
        return model
