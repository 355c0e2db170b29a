"""Configs of the policy stages: dataclasses that load from YAML and print back.

Every check runs when the config is built (``__post_init__``), so an unknown key or an
out-of-range value (``beta <= 0``, ``tau <= 0``, ...) is a clear error before any training starts.
This module imports no torch: the CLI loads configs cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "TrainingConfig",
    "SFTConfig",
    "DPOConfig",
    "PPOConfig",
    "NashMDConfig",
    "BestOfNConfig",
    "STAGE_CONFIGS",
    "load_config",
    "config_to_yaml",
]


class ConfigError(ValueError):
    """A config with an unknown key or an out-of-range value."""


def _positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


def _positive_int(name: str, value: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def _one_of(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class TrainingConfig:
    """Settings shared by every stage (the shared training loop reads these)."""

    representation: str = "lm"  # "lm": a transformers causal LM; "tabular": policy.tabular
    model: str | None = None  # a local model folder (lm)
    tokenizer: str | None = None  # defaults to `model`
    output_dir: str = "policy-runs"
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None  # optimizer steps; None: num_epochs over the data
    num_epochs: int = 1
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    max_length: int = 512
    max_prompt_length: int = 256
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None
    eval_fraction: float = 0.0
    checkpoint_every: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _one_of("representation", self.representation, ("lm", "tabular"))
        _positive("learning_rate", self.learning_rate)
        _non_negative("weight_decay", self.weight_decay)
        _positive_int("batch_size", self.batch_size)
        _positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        _positive_int("max_steps", self.max_steps, allow_none=True)
        _positive_int("num_epochs", self.num_epochs)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        _positive("max_grad_norm", self.max_grad_norm)
        _one_of("mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        _positive_int("max_length", self.max_length)
        _positive_int("max_prompt_length", self.max_prompt_length)
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})"
            )
        _positive_int("log_every", self.log_every)
        _positive_int("eval_every", self.eval_every, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        if not (0.0 <= self.eval_fraction < 1.0):
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}")


@dataclass
class SFTConfig(TrainingConfig):
    """Supervised fine-tuning on the chosen response of every decided pair."""

    learning_rate: float = 5e-5


DISTRIBUTION_LEARNING_LOSSES = ("preference_mle", "preference_distillation")
DPO_LOSSES = ("sigmoid", "ipo", "robust", "conservative") + DISTRIBUTION_LEARNING_LOSSES


@dataclass
class DPOConfig(TrainingConfig):
    """The DPO family (see ``policy.lm.losses``).

    For ``sigmoid``/``ipo``/``robust``/``conservative``, ``beta`` is the usual temperature of the
    implicit reward ``beta log pi / pi_ref``. For Yun et al.'s ``preference_mle`` and
    ``preference_distillation``, ``gamma`` is the preference model's temperature
    (``P_pi(a > b) = sigma(gamma log pi(a) / pi(b))``, eq. 3) and ``beta`` weighs the regularizer
    ``beta KL(pi || pi_ref)`` (eqs. 5 and 12), estimated on completions of up to
    ``max_new_tokens`` tokens (and at most ``max_length`` with the prompt) sampled from the policy at
    temperature 1 (one per pair in a batch).
    """

    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0  # robust / conservative DPO: the assumed label-flip rate
    gamma: float = 0.1  # preference_mle / preference_distillation: the preference temperature
    max_new_tokens: int = 64  # preference_mle / preference_distillation: length of the KL samples
    reference_cache_dir: str | None = None  # None: <output_dir>/reference-cache
    reference_batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("beta", self.beta)
        _positive("gamma", self.gamma)
        _positive_int("max_new_tokens", self.max_new_tokens)
        _one_of("loss", self.loss, DPO_LOSSES)
        if not (0.0 <= self.label_smoothing < 0.5):
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.loss in ("robust", "conservative") and self.label_smoothing == 0.0:
            raise ConfigError(f"loss {self.loss!r} needs label_smoothing > 0 (0 is plain sigmoid DPO)")
        _positive_int("reference_batch_size", self.reference_batch_size)


@dataclass
class _SamplingConfig(TrainingConfig):
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int("max_new_tokens", self.max_new_tokens)
        _positive("temperature", self.temperature)
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {self.top_k!r}")


@dataclass
class PPOConfig(_SamplingConfig):
    """PPO with a per-token KL penalty to the reference (Ouyang et al. 2022) and an entropy bonus.

    ``kl_coef`` is beta; ``entropy_coef`` is gamma of Yun et al.'s reverse-KL objective
    ``E[r] - beta KL(pi || pi_ref) + gamma H(pi)`` (0 gives standard RLHF-PPO).
    """

    learning_rate: float = 1e-5
    kl_coef: float = 0.05
    entropy_coef: float = 0.0
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    value_coef: float = 0.1
    discount: float = 1.0
    gae_lambda: float = 0.95
    ppo_epochs: int = 4
    num_minibatches: int = 1
    whiten_advantages: bool = True
    tabular_iterations: int = 0  # unused by the tabular stage (exact optimum); kept for symmetry

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("kl_coef", self.kl_coef)
        _non_negative("entropy_coef", self.entropy_coef)
        _positive("clip_range", self.clip_range)
        _positive("value_clip_range", self.value_clip_range)
        _non_negative("value_coef", self.value_coef)
        if not (0.0 < self.discount <= 1.0):
            raise ConfigError(f"discount must be in (0, 1], got {self.discount!r}")
        if not (0.0 <= self.gae_lambda <= 1.0):
            raise ConfigError(f"gae_lambda must be in [0, 1], got {self.gae_lambda!r}")
        _positive_int("ppo_epochs", self.ppo_epochs)
        _positive_int("num_minibatches", self.num_minibatches)
        if self.batch_size % self.num_minibatches:
            raise ConfigError(f"batch_size ({self.batch_size}) must be divisible by num_minibatches ({self.num_minibatches})")


@dataclass
class NashMDConfig(_SamplingConfig):
    """Nash-MD (Munos et al. 2023): ``tau`` regularizes to the reference; the opponent is drawn
    from the geometric mixture ``pi^(1 - mixture_coef) * pi_ref^mixture_coef``."""

    tau: float = 0.1
    mixture_coef: float = 0.125
    n_iterations: int = 1000  # tabular Nash-MD iterations

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("tau", self.tau)
        if not (0.0 <= self.mixture_coef <= 1.0):
            raise ConfigError(f"mixture_coef must be in [0, 1], got {self.mixture_coef!r}")
        _positive_int("n_iterations", self.n_iterations)


@dataclass
class BestOfNConfig(_SamplingConfig):
    """Best-of-n sampling from the reference with the reward model: the baseline."""

    n: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int("n", self.n)


STAGE_CONFIGS: dict[str, type[TrainingConfig]] = {
    "sft": SFTConfig,
    "dpo": DPOConfig,
    "ppo": PPOConfig,
    "nash": NashMDConfig,
    "bon": BestOfNConfig,
}

C = TypeVar("C", bound=TrainingConfig)


def load_config(source: str | Path | dict[str, Any] | None, cls: type[C]) -> C:
    """Build a ``cls`` from a YAML file, a YAML string's path, or a dict; unknown keys are an error."""
    if source is None:
        data: Any = {}
        origin = "defaults"
    elif isinstance(source, dict):
        data, origin = dict(source), "dict"
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        data = {} if data is None else data
        origin = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a config must be a mapping of keys to values, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def config_to_yaml(config: TrainingConfig) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def config_to_dict(config: TrainingConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


_ = field  # re-exported for subclasses defined elsewhere
