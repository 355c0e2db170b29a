"""The language-model stages: SFT, the DPO family, PPO, Nash-MD-PG and best-of-n.

Each stage is an estimator: hyper-parameters (a config dataclass) in the constructor, ``fit``
returns ``self`` with ``model_`` (the trained causal LM), ``history_`` (a polars frame of the
logged steps) and ``metrics_``; ``save`` writes a ``transformers`` folder plus the config. The
loss of each algorithm lives in :mod:`policy.lm.losses`; the loop in :mod:`policy.lm.loop`.
Pass ``store=`` to record a run with lineage (version hash, config, metrics, artifact).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ..config import DISTRIBUTION_LEARNING_LOSSES, BestOfNConfig, DPOConfig, NashMDConfig, PPOConfig, SFTConfig, TrainingConfig
from ..protocols import PreferenceModel, RewardModel
from ..tabular import _as_frame
from . import losses
from .data import (CompletionDataset, PairDataset, PromptDataset, pad_completions, padding_id, preference_pairs,
                   sft_examples)
from .logprobs import completion_log_probs, completion_token_log_probs
from .loop import make_accelerator, move_to, train
from .reference import attach_reference_log_probs
from .sampling import decode_completions, sample_completions


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def check_tokenizer_compatible(fitted_model: Any, tokenizer) -> None:
    """A fitted model that reads token ids (it has ``tokenizer``) must share the policy's vocabulary;
    models that read text (``reward(prompts, responses)``) work with any tokenizer."""
    other = getattr(fitted_model, "tokenizer", None) or getattr(fitted_model, "tokenizer_", None)
    if other is None or not getattr(fitted_model, "reads_token_ids", False):
        return
    if other.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"{type(fitted_model).__name__} was fitted with another tokenizer ({len(other)} tokens) than the "
            f"policy's ({len(tokenizer)} tokens); it reads token ids, so refit it on the policy's tokenizer"
        )


def _require(obj: Any, method: str, what: str) -> None:
    if obj is None or not callable(getattr(obj, method, None)):
        raise TypeError(f"{what} must have a {method}() method, got {type(obj).__name__}")


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    reference.eval()
    return reference


@contextlib.contextmanager
def _recorded_run(store, kind: str, data: Any, config: TrainingConfig, estimator, parent_run_id: str | None = None):
    """Record a run in ``store`` (if given): completed with metrics and artifact, or failed.

    ``parent_run_id``: the run of the fitted reward / preference model the stage consumed.
    """
    if store is None:
        yield None
        return
    run = store.start_run(kind, data, config=dataclasses.asdict(config), parent_run_id=parent_run_id)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):
            run.finish(metrics={}, status="failed")
        raise
    run.finish(metrics=estimator.metrics_, artifact_path=getattr(estimator, "artifact_path_", None))


class _Stage:
    config_class: type[TrainingConfig] = TrainingConfig
    kind = "policy"

    def __init__(self, config: TrainingConfig | dict | None = None):
        if config is None:
            config = self.config_class()
        elif isinstance(config, dict):
            from ..config import load_config

            config = load_config(config, self.config_class)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")

    def save(self, path: str | Path) -> Path:
        """Write the trained model, the tokenizer, the config and the history to ``path``."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(path)
        if getattr(self, "tokenizer_", None) is not None:
            self.tokenizer_.save_pretrained(path)
        (path / "policy_config.json").write_text(json.dumps(
            {"stage": type(self).__name__, "config": dataclasses.asdict(self.config),
             "version_hash": self.version_hash_, "metrics": self.metrics_}, default=str, indent=2))
        self.history_.write_parquet(path / "history.parquet")
        self.artifact_path_ = str(path)
        return path

    def _sampling_setup(self, data: Any, model, tokenizer, judge: Any, method: str, role: str, reference_model):
        """What the sampling stages (PPO, Nash-MD-PG) share before training: check the judge
        (reward or preference model), the version's prompts, the accelerator, a frozen reference
        without dropout, and a sampling generator seeded per process."""
        _require(judge, method, role)
        check_tokenizer_compatible(judge, tokenizer)
        self.version_hash_ = getattr(data, "hash", None)
        self.tokenizer_ = tokenizer
        prompts = PromptDataset(tokenizer, _distinct_prompts(data), self.config.max_prompt_length)
        accelerator = make_accelerator(self.config)
        reference = (reference_model if reference_model is not None else _frozen_copy(model)).to(accelerator.device)
        _disable_dropout(model)
        _disable_dropout(reference)
        generator = torch.Generator().manual_seed(self.config.seed + accelerator.process_index)
        return prompts, accelerator, reference, generator

    def _finish(self, model, history: pl.DataFrame, extra: dict[str, Any]) -> None:
        self.model_ = model
        self.history_ = history
        last = {k: v for k, v in (history.row(-1, named=True) if history.height else {}).items()
                if isinstance(v, (int, float)) and v is not None}
        self.metrics_ = {**{f"final_{k}": v for k, v in last.items()}, **extra}


# ---------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------


class SupervisedFineTuning:
    """Negative log-likelihood of the completion tokens (the prompt is context only)."""

    def rollout(self, model, batch):
        return [batch]

    def loss(self, model, batch):
        log_probs, mask = completion_token_log_probs(model, batch)
        nll = -(log_probs.sum() / mask.sum().clamp(min=1))
        return nll, {"tokens": mask.sum()}


class SFT(_Stage):
    """Fine-tune on the chosen response of every decided pair: makes the reference policy."""

    config_class = SFTConfig
    kind = "policy_sft"

    def fit(self, data: Any, model, tokenizer, store=None, resume: bool = False) -> SFT:
        self.version_hash_ = getattr(data, "hash", None)
        self.tokenizer_ = tokenizer
        dataset = CompletionDataset(tokenizer, sft_examples(data), self.config.max_length, self.config.max_prompt_length)
        with _recorded_run(store, self.kind, data, self.config, self):
            trained, history = train(model, SupervisedFineTuning(), dataset, self.config, resume=resume, description="sft")
            self._finish(trained, history, {"n_examples": len(dataset)})
            if store is not None:
                self.save(Path(self.config.output_dir) / "final")
        return self


# ---------------------------------------------------------------------------------------------
# DPO family
# ---------------------------------------------------------------------------------------------


class DirectPreferenceOptimization:
    """The DPO family on pairs with precomputed reference log-probabilities."""

    def __init__(self, beta: float, loss: str, label_smoothing: float = 0.0):
        self.beta, self.loss_type, self.label_smoothing = beta, loss, label_smoothing

    def rollout(self, model, batch):
        return [batch]

    def loss(self, model, batch):
        logps = completion_log_probs(model, batch)
        chosen, rejected = logps.chunk(2)
        chosen_ratio = chosen - batch["reference_chosen"]
        rejected_ratio = rejected - batch["reference_rejected"]
        b, eps = self.beta, self.label_smoothing
        kind = self.loss_type
        if kind == "sigmoid":
            per_pair = losses.dpo_sigmoid_loss(chosen_ratio, rejected_ratio, b)
        elif kind == "conservative":
            per_pair = losses.conservative_dpo_loss(chosen_ratio, rejected_ratio, b, eps)
        elif kind == "robust":
            per_pair = losses.robust_dpo_loss(chosen_ratio, rejected_ratio, b, eps)
        elif kind == "ipo":
            lengths = batch["completion_mask"].sum(-1).float().chunk(2)
            per_pair = losses.ipo_loss(chosen_ratio, rejected_ratio, b, *lengths)
        else:  # pragma: no cover - the config validates the name
            raise ValueError(kind)
        margin = (chosen_ratio - rejected_ratio).detach()
        return per_pair.mean(), {"reward_margin": b * margin.mean(), "reward_accuracy": (margin > 0).float().mean()}


class DistributionLearning:
    """Yun et al. (2025, "Alignment as Distribution Learning"): preference MLE (eq. 5) and
    preference distillation (eq. 12). The pair term reads the policy's explicit preference model
    ``sigma(gamma log pi(a+) / pi(a-))`` (no reference inside); the regularizer
    ``beta KL(pi || pi_ref)`` is estimated on one completion per pair sampled from the policy at
    temperature 1, scored by the frozen reference (:func:`losses.sampled_kl_loss`)."""

    def __init__(self, config: DPOConfig, tokenizer, pairs: PairDataset, reference: torch.nn.Module, accelerator,
                 generator: torch.Generator):
        self.config, self.tokenizer, self.pairs = config, tokenizer, pairs
        self.reference, self.accelerator, self.generator = reference, accelerator, generator
        self.pad_id = pairs.pad_id

    def rollout(self, model, batch):
        cfg, acc, pairs = self.config, self.accelerator, self.pairs
        indices = batch["indices"].tolist()
        prompt_ids = [pairs.prompt_ids[i] for i in indices]
        # the samples obey the same length limit as the pairs: prompt + completion <= max_length
        max_new_tokens = max(1, min(cfg.max_new_tokens, cfg.max_length - max(len(p) for p in prompt_ids)))
        samples = sample_completions(acc.unwrap_model(model), prompt_ids, max_new_tokens, self.tokenizer.eos_token_id,
                                     self.pad_id, temperature=1.0, top_k=0, generator=self.generator)
        with torch.no_grad():
            sample_reference = completion_log_probs(
                self.reference, move_to(pad_completions(prompt_ids, samples, self.pad_id), acc.device))
        # chosen, rejected and the policy's own samples: one forward pass scores all three
        tokens = pad_completions(prompt_ids * 3, [pairs.chosen_ids[i] for i in indices]
                                 + [pairs.rejected_ids[i] for i in indices] + samples, self.pad_id)
        tokens = move_to(tokens, acc.device)
        tokens.update(label_prob=batch["label_prob"], teacher_prob=batch["teacher_prob"],
                      sample_reference_log_prob=sample_reference)
        return [tokens]

    def loss(self, model, batch):
        cfg = self.config
        chosen, rejected, sampled = completion_log_probs(model, batch).chunk(3)
        if cfg.loss == "preference_mle":
            per_pair = losses.preference_mle_loss(chosen, rejected, cfg.gamma, batch["label_prob"])
        else:
            per_pair = losses.preference_distillation_loss(chosen, rejected, cfg.gamma, batch["teacher_prob"])
        kl_surrogate, kl = losses.sampled_kl_loss(sampled, batch["sample_reference_log_prob"])
        preference = torch.sigmoid(losses.explicit_preference_logit(chosen, rejected, cfg.gamma)).detach()
        return per_pair.mean() + cfg.beta * kl_surrogate, {
            "pair_loss": per_pair.mean().detach(), "kl": kl, "policy_preference": preference.mean(),
            "reward_accuracy": (preference > 0.5).float().mean()}


class DPO(_Stage):
    """DPO, IPO, robust / conservative DPO, and Yun et al.'s preference MLE and preference
    distillation (:class:`DistributionLearning`).

    ``preference_model`` (required for ``loss="preference_distillation"``) gives the soft targets
    ``P_hat(chosen > rejected)``. The reference defaults to a frozen copy of ``model``; for the DPO
    losses its log-probabilities on the pairs are computed once and cached on disk; the
    distribution-learning losses need it during training instead (it scores the policy's samples
    for the KL regularizer).
    """

    config_class = DPOConfig
    kind = "policy_dpo"

    def fit(self, data: Any, model, tokenizer, reference_model=None, preference_model: PreferenceModel | None = None,
            store=None, resume: bool = False, accelerator=None, parent_run_id: str | None = None) -> DPO:
        cfg = self.config
        self.version_hash_ = getattr(data, "hash", None)
        self.tokenizer_ = tokenizer
        pairs = preference_pairs(data, keep_ties=cfg.loss == "preference_mle")
        if cfg.loss == "preference_distillation":
            _require(preference_model, "proba", "preference_model (needed by preference_distillation)")
            check_tokenizer_compatible(preference_model, tokenizer)
        dataset = PairDataset(tokenizer, pairs, cfg.max_length, cfg.max_prompt_length)
        if cfg.loss == "preference_distillation":
            rows = dataset.rows
            teacher = np.asarray(preference_model.proba(rows["prompt"].to_list(), rows["chosen"].to_list(),
                                                        rows["rejected"].to_list()), dtype=np.float32).reshape(-1)
            if teacher.shape != (len(dataset),) or not np.all((teacher >= 0) & (teacher <= 1)):
                raise ValueError("preference_model.proba must return one probability in [0, 1] per pair")
            dataset.teacher_prob = teacher
        accelerator = accelerator or make_accelerator(cfg)
        _disable_dropout(model)  # as TRL does by default: the log-ratios must be 0 at step 0
        reference = reference_model if reference_model is not None else _frozen_copy(model)
        if cfg.loss in DISTRIBUTION_LEARNING_LOSSES:
            reference = reference.to(accelerator.device)
            _disable_dropout(reference)
            generator = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
            algorithm = DistributionLearning(cfg, tokenizer, dataset, reference, accelerator, generator)
            with _recorded_run(store, self.kind, data, cfg, self, parent_run_id):
                self.reference_cache_ = None
                trained, history = train(model, algorithm, dataset, cfg, accelerator=accelerator, resume=resume,
                                         description=f"dpo[{cfg.loss}]")
                self._finish(trained, history, {"n_pairs": len(dataset), "n_pairs_dropped": dataset.dropped})
                if store is not None:
                    self.save(Path(cfg.output_dir) / "final")
            return self
        cache_dir = cfg.reference_cache_dir or str(Path(cfg.output_dir) / "reference-cache")
        with _recorded_run(store, self.kind, data, cfg, self, parent_run_id):
            self.reference_cache_ = attach_reference_log_probs(dataset, reference, cache_dir, self.version_hash_,
                                                               cfg.reference_batch_size, accelerator)
            if reference_model is None:
                del reference
            algorithm = DirectPreferenceOptimization(cfg.beta, cfg.loss, cfg.label_smoothing)
            trained, history = train(model, algorithm, dataset, cfg, accelerator=accelerator, resume=resume,
                                     description=f"dpo[{cfg.loss}]")
            self._finish(trained, history, {"n_pairs": len(dataset), "n_pairs_dropped": dataset.dropped,
                                            "reference_cache_hit": bool(self.reference_cache_["cached"])})
            if store is not None:
                self.save(Path(cfg.output_dir) / "final")
        return self


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


class PolicyWithValueHead(torch.nn.Module):
    """A causal LM and a linear value head on its last hidden state; ``forward(batch)`` returns
    per-token ``(log_probs, mask, values)`` for the completion tokens."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.config.hidden_size if hasattr(policy.config, "hidden_size") else policy.config.n_embd
        self.value_head = torch.nn.Linear(hidden, 1, dtype=torch.float32)  # fed hidden.float() below
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: dict[str, torch.Tensor]):
        log_probs, mask, hidden = completion_token_log_probs(self.policy, batch, return_hidden=True)
        values = self.value_head(hidden.float()).squeeze(-1) * mask
        return log_probs, mask, values


class ProximalPolicyOptimization:
    """PPO-clip with a value head, GAE and a per-token KL penalty (Ouyang et al. 2022, eq. 2):
    token reward ``-beta (log pi - log pi_ref) - gamma log pi``, plus the reward model's score on
    the last token. ``gamma`` (``entropy_coef``) is Yun et al.'s entropy bonus for the reverse-KL
    objective ``E[r] - beta KL(pi || pi_ref) + gamma H(pi)``."""

    def __init__(self, config: PPOConfig, tokenizer, prompts: PromptDataset, reward_model: RewardModel,
                 reference: torch.nn.Module, accelerator, generator: torch.Generator):
        self.config, self.tokenizer, self.prompts = config, tokenizer, prompts
        self.reward_model, self.reference, self.accelerator, self.generator = reward_model, reference, accelerator, generator
        self.pad_id = padding_id(tokenizer)

    def rollout(self, model, batch):
        cfg, acc = self.config, self.accelerator
        unwrapped = acc.unwrap_model(model)
        indices = batch["indices"].tolist()
        prompt_ids = [self.prompts.prompt_ids[i] for i in indices]
        prompts = [self.prompts.prompts[i] for i in indices]
        completions = sample_completions(unwrapped.policy, prompt_ids, cfg.max_new_tokens, self.tokenizer.eos_token_id,
                                         self.pad_id, cfg.temperature, cfg.top_k, generator=self.generator)
        texts = decode_completions(self.tokenizer, completions)
        scores = torch.as_tensor(np.asarray(self.reward_model.reward(prompts, texts), dtype=np.float32), device=acc.device)
        if scores.shape != (len(indices),) or not torch.isfinite(scores).all():
            raise ValueError(f"reward model returned {tuple(scores.shape)} values for {len(indices)} responses")
        tokens = move_to(pad_completions(prompt_ids, completions, self.pad_id), acc.device)
        tokens["score_from"] = int(tokens["prompt_lengths"].min())
        with torch.no_grad():
            old_log_probs, mask, old_values = model(tokens)
            reference_log_probs, _ = completion_token_log_probs(self.reference, tokens)
        kl = (old_log_probs - reference_log_probs) * mask
        rewards = -cfg.kl_coef * kl - cfg.entropy_coef * old_log_probs * mask
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
        rewards[torch.arange(len(indices)), last] += scores
        advantages, returns = losses.generalized_advantages(rewards, old_values, mask, cfg.discount, cfg.gae_lambda)
        if cfg.whiten_advantages and mask.sum() > 1:
            advantages = losses.masked_whiten(advantages, mask)
        stats = {"score": scores.mean(), "kl": kl.sum(-1).mean(), "completion_length": mask.sum(-1).mean()}
        minibatches = []
        size = len(indices) // cfg.num_minibatches or 1
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(indices), generator=self.generator).tolist()
            for start in range(0, len(indices), size):
                rows = torch.tensor(order[start: start + size], device=acc.device)
                mb = {k: v[rows] for k, v in tokens.items() if isinstance(v, torch.Tensor)}
                mb.update(score_from=tokens["score_from"], old_log_probs=old_log_probs[rows], old_values=old_values[rows],
                          advantages=advantages[rows], returns=returns[rows], stats=stats)
                minibatches.append(mb)
        return minibatches

    def loss(self, model, mb):
        cfg = self.config
        log_probs, mask, values = model(mb)
        policy_loss = losses.ppo_clipped_policy_loss(log_probs, mb["old_log_probs"], mb["advantages"], mask, cfg.clip_range)
        value_loss = losses.clipped_value_loss(values, mb["old_values"], mb["returns"], mask, cfg.value_clip_range)
        ratio = torch.exp(log_probs - mb["old_log_probs"])
        clip_fraction = losses.masked_mean(((ratio - 1).abs() > cfg.clip_range).float(), mask)
        return policy_loss + cfg.value_coef * value_loss, {
            "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "clip_fraction": clip_fraction,
            **mb["stats"]}


def _distinct_prompts(data: Any) -> list[str]:
    frame = _as_frame(data)
    if "prompt" not in frame.columns or frame.height == 0:
        raise ValueError("no prompts: the comparisons are empty or have no 'prompt' column")
    return frame["prompt"].unique(maintain_order=True).to_list()


class PPO(_Stage):
    """RLHF with PPO against a fitted reward model, on the version's prompts."""

    config_class = PPOConfig
    kind = "policy_ppo"

    def fit(self, data: Any, model, tokenizer, reward_model: RewardModel, reference_model=None, store=None,
            resume: bool = False, parent_run_id: str | None = None) -> PPO:
        cfg = self.config
        prompts, accelerator, reference, generator = self._sampling_setup(
            data, model, tokenizer, reward_model, "reward", "reward_model", reference_model)
        wrapped = PolicyWithValueHead(model)
        algorithm = ProximalPolicyOptimization(cfg, tokenizer, prompts, reward_model, reference, accelerator, generator)
        with _recorded_run(store, self.kind, data, cfg, self, parent_run_id):
            trained, history = train(wrapped, algorithm, prompts, cfg, accelerator=accelerator, resume=resume,
                                     description="ppo")
            self.value_head_ = trained.value_head
            self._finish(trained.policy, history, {"n_prompts": len(prompts)})
            if store is not None:
                self.save(Path(cfg.output_dir) / "final")
        return self


# ---------------------------------------------------------------------------------------------
# Nash-MD-PG
# ---------------------------------------------------------------------------------------------


class NashMirrorDescentPolicyGradient:
    """Nash-MD-PG (Munos et al. 2023, Sec. 7): ``y ~ pi``, ``y' ~ pi^(1-c) pi_ref^c`` (token-level
    geometric mixture), judged by the preference model; REINFORCE with coefficient
    ``P(y > y') - 1/2 - tau log(pi(y)/pi_ref(y))``."""

    def __init__(self, config: NashMDConfig, tokenizer, prompts: PromptDataset, preference_model: PreferenceModel,
                 reference: torch.nn.Module, accelerator, generator: torch.Generator):
        self.config, self.tokenizer, self.prompts = config, tokenizer, prompts
        self.preference_model, self.reference, self.accelerator, self.generator = preference_model, reference, accelerator, generator
        self.pad_id = padding_id(tokenizer)

    def rollout(self, model, batch):
        cfg, acc = self.config, self.accelerator
        policy = acc.unwrap_model(model)
        indices = batch["indices"].tolist()
        prompt_ids = [self.prompts.prompt_ids[i] for i in indices]
        prompts = [self.prompts.prompts[i] for i in indices]
        common = dict(max_new_tokens=cfg.max_new_tokens, eos_id=self.tokenizer.eos_token_id, pad_id=self.pad_id,
                      temperature=cfg.temperature, top_k=cfg.top_k, generator=self.generator)
        ours = sample_completions(policy, prompt_ids, **common)
        theirs = sample_completions(policy, prompt_ids, mixture_model=self.reference, mixture_coef=cfg.mixture_coef, **common)
        ours_text, theirs_text = decode_completions(self.tokenizer, ours), decode_completions(self.tokenizer, theirs)
        preference = np.asarray(self.preference_model.proba(prompts, ours_text, theirs_text), dtype=np.float32).reshape(-1)
        if preference.shape != (len(indices),) or not np.all((preference >= 0) & (preference <= 1)):
            raise ValueError("preference_model.proba must return one probability in [0, 1] per pair")
        tokens = move_to(pad_completions(prompt_ids, ours, self.pad_id), acc.device)
        with torch.no_grad():
            tokens["reference_log_prob"] = completion_log_probs(self.reference, tokens)
        tokens["preference"] = torch.as_tensor(preference, device=acc.device)
        return [tokens]

    def loss(self, model, batch):
        log_prob = completion_log_probs(model, batch)
        log_ratio = log_prob.detach() - batch["reference_log_prob"]
        per_sample = losses.nash_md_policy_gradient_loss(log_prob, log_ratio, batch["preference"], self.config.tau)
        return per_sample.mean(), {"preference": batch["preference"].mean(), "kl": log_ratio.mean()}


class NashMDPG(_Stage):
    """Nash-MD-PG against a fitted pairwise preference model, on the version's prompts."""

    config_class = NashMDConfig
    kind = "policy_nash_md"

    def fit(self, data: Any, model, tokenizer, preference_model: PreferenceModel, reference_model=None, store=None,
            resume: bool = False, parent_run_id: str | None = None) -> NashMDPG:
        cfg = self.config
        prompts, accelerator, reference, generator = self._sampling_setup(
            data, model, tokenizer, preference_model, "proba", "preference_model", reference_model)
        algorithm = NashMirrorDescentPolicyGradient(cfg, tokenizer, prompts, preference_model, reference, accelerator, generator)
        with _recorded_run(store, self.kind, data, cfg, self, parent_run_id):
            trained, history = train(model, algorithm, prompts, cfg, accelerator=accelerator, resume=resume,
                                     description="nash-md-pg")
            self._finish(trained, history, {"n_prompts": len(prompts)})
            if store is not None:
                self.save(Path(cfg.output_dir) / "final")
        return self


# ---------------------------------------------------------------------------------------------
# Best-of-n and evaluation
# ---------------------------------------------------------------------------------------------


class BestOfN(_Stage):
    """Sample ``n`` completions from the reference and keep the one the reward model likes best."""

    config_class = BestOfNConfig
    kind = "policy_best_of_n"

    def fit(self, data: Any, model, tokenizer, reward_model: RewardModel, store=None, parent_run_id: str | None = None) -> BestOfN:
        _require(reward_model, "reward", "reward_model")
        check_tokenizer_compatible(reward_model, tokenizer)
        self.version_hash_ = getattr(data, "hash", None) if data is not None else None
        self.model_, self.tokenizer_, self.reward_model_ = model, tokenizer, reward_model
        self.history_ = pl.DataFrame()
        with _recorded_run(store, self.kind, data, self.config, self, parent_run_id):
            prompts = _distinct_prompts(data) if data is not None else []
            self.samples_ = self.generate(prompts) if prompts else pl.DataFrame()
            gain = float((self.samples_["reward"] - self.samples_["mean_reward"]).mean()) if prompts else 0.0
            self.metrics_ = {"n": self.config.n, "n_prompts": len(prompts), "reward_gain_over_mean": gain}
        return self

    def generate(self, prompts: list[str], seed: int | None = None) -> pl.DataFrame:
        """``prompt, response, reward, mean_reward``: the best of ``n`` samples per prompt."""
        cfg = self.config
        tok = self.tokenizer_
        pad_id = padding_id(tok)
        dataset = PromptDataset(tok, prompts, cfg.max_prompt_length)
        generator = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        repeated_ids = [ids for ids in dataset.prompt_ids for _ in range(cfg.n)]
        repeated = [p for p in prompts for _ in range(cfg.n)]
        completions = sample_completions(self.model_, repeated_ids, cfg.max_new_tokens, tok.eos_token_id, pad_id,
                                         cfg.temperature, cfg.top_k, generator=generator)
        texts = decode_completions(tok, completions)
        rewards = np.asarray(self.reward_model_.reward(repeated, texts), dtype=np.float64).reshape(len(prompts), cfg.n)
        best = rewards.argmax(1)
        return pl.DataFrame({
            "prompt": prompts,
            "response": [texts[i * cfg.n + b] for i, b in enumerate(best)],
            "reward": rewards[np.arange(len(prompts)), best],
            "mean_reward": rewards.mean(1),
        })


@torch.no_grad()
def evaluate_policy(policy, reference, tokenizer, prompts: list[str], preference_model: PreferenceModel | None = None,
                    reward_model: RewardModel | None = None, n_samples: int = 4, max_new_tokens: int = 32,
                    temperature: float = 1.0, seed: int = 0, max_prompt_length: int = 256) -> pl.DataFrame:
    """Per prompt: win rate of policy samples against reference samples under ``preference_model``,
    reward gain under ``reward_model``, and the Monte-Carlo KL(pi || pi_ref) = E_pi[log pi - log pi_ref]."""
    pad_id = padding_id(tokenizer)
    dataset = PromptDataset(tokenizer, prompts, max_prompt_length)
    ids = [p for p in dataset.prompt_ids for _ in range(n_samples)]
    texts_in = [p for p in prompts for _ in range(n_samples)]
    generator = torch.Generator().manual_seed(seed)
    ours = sample_completions(policy, ids, max_new_tokens, tokenizer.eos_token_id, pad_id, temperature, generator=generator)
    theirs = sample_completions(reference, ids, max_new_tokens, tokenizer.eos_token_id, pad_id, temperature, generator=generator)
    device = next(policy.parameters()).device
    tokens = move_to(pad_completions(ids, ours, pad_id), device)
    kl = (completion_log_probs(policy, tokens) - completion_log_probs(reference, tokens)).float().cpu().numpy()
    out: dict[str, Any] = {"prompt": prompts, "kl_to_reference": kl.reshape(-1, n_samples).mean(1)}
    ours_text, theirs_text = decode_completions(tokenizer, ours), decode_completions(tokenizer, theirs)
    if preference_model is not None:
        win = np.asarray(preference_model.proba(texts_in, ours_text, theirs_text), dtype=np.float64)
        out["win_rate"] = win.reshape(-1, n_samples).mean(1)
    if reward_model is not None:
        gain = (np.asarray(reward_model.reward(texts_in, ours_text), dtype=np.float64)
                - np.asarray(reward_model.reward(texts_in, theirs_text), dtype=np.float64))
        out["reward_gain"] = gain.reshape(-1, n_samples).mean(1)
    return pl.DataFrame(out)
