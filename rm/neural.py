"""Neural reward model: `AutoModelForSequenceClassification` (one output) fine-tuned on pairs.

r(x, y) is the scalar logit of the model on the pair encoding (prompt, response). Training
minimises the Bradley-Terry loss (optionally with a strength margin, label smoothing and a reward
centering term) or, when the data holds ties, the Davidson loss with a learned log nu
(`rm.losses`). Chosen and rejected sequences of a batch go through ONE forward pass; batches are
grouped by length; the held-out pairs are evaluated every epoch; checkpoints are written every
`save_steps` and at each epoch end, and a new `fit` with the same `output_dir` resumes from the
latest complete one (after a kill, too). The saved folder is a plain Hugging Face model
(`model.safetensors`, `config.json`, tokenizer) loadable by `AutoModelForSequenceClassification`
and TRL, plus `workbench_reward_model.json` (version hash, config, metrics, truncation counts).

The same code runs in one process or under `accelerate launch` (DDP on CPU/gloo or GPUs): each
global batch of `batch_size` pairs is split evenly over the processes and the loss is scaled so
that the averaged gradient equals the one-process gradient; `gradient_accumulation_steps` splits
each process's share into micro-batches with the same summed gradient (less memory, same model).

Truncation rule (stated, counted, reported in `truncation_`): a sequence is
[special tokens] + prompt + response. When it exceeds `max_length`, the response keeps its FIRST
tokens and the prompt its LAST tokens (the latest turns); the prompt keeps what it needs as long
as the response keeps at least half of the budget. Nothing is dropped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from rm.pairs import NoUsablePairsError, PreferencePairs, check_texts, preference_pairs

METADATA_FILE = "workbench_reward_model.json"
STATE_FILE = "trainer_state.json"


class NotASequenceClassifierError(ValueError):
    """A folder that cannot be loaded as a one-output sequence-classification model."""


@dataclass
class NeuralRewardConfig:
    """Hyper-parameters of the neural reward model (and of the cross-encoder preference model)."""

    model: str | None = None  # local Hugging Face folder; None = the packaged all-MiniLM-L6-v2
    max_length: int = 256
    batch_size: int = 8  # pairs per optimiser step, over all processes
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step (same gradient, less memory)
    eval_batch_size: int = 32  # sequences per inference batch
    epochs: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    margin_scale: float = 0.0  # margin m = margin_scale * strength (strength null -> 0)
    center_coef: float = 0.0  # reward centering coefficient (0.01 is common)
    label_smoothing: float = 0.0
    ties: str = "davidson"  # "davidson" or "drop"
    eval_fraction: float = 0.1  # of the training pairs held out when no eval data is given
    group_by_length: bool = True
    disable_dropout: bool = True
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # "fp32" or "bf16"
    seed: int = 0
    output_dir: str | None = None
    save_steps: int = 0  # 0: checkpoint at epoch ends only
    keep_checkpoints: int = 2
    resume: bool = True
    progress: bool = True
    max_steps: int | None = None  # stop early (tests, smoke runs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "NeuralRewardConfig":
        import yaml

        raw = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> "NeuralRewardConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(names)}")
        return cls(**raw)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(asdict(self), sort_keys=False)

    def validate(self) -> None:
        if self.max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        if not isinstance(self.gradient_accumulation_steps, int) or not 1 <= self.gradient_accumulation_steps <= self.batch_size:
            raise ValueError(f"gradient_accumulation_steps must be an integer in [1, batch_size={self.batch_size}], "
                             f"got {self.gradient_accumulation_steps!r}")
        if self.ties not in ("davidson", "drop"):
            raise ValueError("ties must be 'davidson' or 'drop'")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be 'fp32' or 'bf16'")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")


# ---------------------------------------------------------------------------------------------
# model folders
# ---------------------------------------------------------------------------------------------
def resolve_model_path(model: str | None) -> Path:
    if model is None:
        from rm.encoders import minilm_model_path

        return minilm_model_path()
    return Path(model)


def check_model_folder(path: str | Path, *, trained: bool = False):
    """Validate a folder as a sequence-classification checkpoint; returns its `AutoConfig`.

    Raises `NotASequenceClassifierError` for a folder without config.json, a model type with no
    `AutoModelForSequenceClassification`, weights not in safetensors, or (for `trained=True`) a
    model that is not a one-output `*ForSequenceClassification`.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    path = Path(path)
    if not path.is_dir():
        raise NotASequenceClassifierError(f"{path} is not a folder (expected a local Hugging Face checkpoint)")
    if not (path / "config.json").exists():
        raise NotASequenceClassifierError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # malformed config
        raise NotASequenceClassifierError(f"{path}/config.json cannot be read as a model config: {exc}") from exc
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise NotASequenceClassifierError(
            f"{path} holds a {config.model_type!r} model, which has no AutoModelForSequenceClassification"
        )
    if not any(path.glob("*.safetensors")):
        other = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        raise NotASequenceClassifierError(
            f"{path} has no .safetensors weights{' (found ' + ', '.join(other) + ')' if other else ''}; "
            "weights load only from safetensors"
        )
    if trained:
        archs = config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in archs) or config.num_labels != 1:
            raise NotASequenceClassifierError(
                f"{path} is not a one-output sequence-classification model "
                f"(architectures={archs}, num_labels={config.num_labels})"
            )
    return config


# ---------------------------------------------------------------------------------------------
# tokenization with the stated truncation rule
# ---------------------------------------------------------------------------------------------
@dataclass
class TruncationCounts:
    n_sequences: int = 0
    n_truncated: int = 0
    n_prompt_truncated: int = 0
    n_response_truncated: int = 0
    tokens_removed: int = 0

    def add(self, other: "TruncationCounts") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class PairEncoder:
    """Tokenizes (prompt, response) into model inputs with the module's truncation rule.

    `segments=2` (reward model): [prompt | response]. The cross-encoder subclass lays out three
    segments (prompt | response a SEP response b).
    """

    def __init__(self, tokenizer, max_length: int):
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.use_type_ids = "token_type_ids" in tokenizer.model_input_names
        post = backend.post_processor
        self.n_special = post.num_special_tokens_to_add(True) if post is not None else 0
        self.budget = max_length - self.n_special
        if self.budget < 4:
            raise ValueError(f"max_length {max_length} leaves no room for text")

    @staticmethod
    def keep_lengths(lp: int, lr: int, budget: int) -> tuple[int, int]:
        """(prompt tokens kept, response tokens kept) under the truncation rule."""
        if lp + lr <= budget:
            return lp, lr
        r_keep = min(lr, max(budget - lp, budget // 2))
        return min(lp, budget - r_keep), r_keep

    def _finish(self, p_enc, r_enc):
        if self.backend.post_processor is not None:
            enc = self.backend.post_process(p_enc, r_enc, add_special_tokens=True)
        else:
            from tokenizers import Encoding

            enc = Encoding.merge([p_enc, r_enc])
        return enc.ids, (enc.type_ids if self.use_type_ids else None)

    def encode(self, prompts: list[str], responses: list[str]):
        """Lists of input ids and type ids (or None), and the `TruncationCounts`."""
        counts = TruncationCounts(n_sequences=len(prompts))
        p_encs = self.backend.encode_batch(list(prompts), add_special_tokens=False)
        r_encs = self.backend.encode_batch(list(responses), add_special_tokens=False)
        ids, types = [], []
        for p_enc, r_enc in zip(p_encs, r_encs):
            lp, lr = len(p_enc.ids), len(r_enc.ids)
            kp, kr = self.keep_lengths(lp, lr, self.budget)
            if kp < lp or kr < lr:
                counts.n_truncated += 1
                counts.n_prompt_truncated += kp < lp
                counts.n_response_truncated += kr < lr
                counts.tokens_removed += (lp - kp) + (lr - kr)
                p_enc.truncate(kp, direction="left")
                r_enc.truncate(kr, direction="right")
            i, t = self._finish(p_enc, r_enc)
            ids.append(i)
            types.append(t)
        return ids, types, counts


def pad_batch(seqs: list[list[int]], types: list | None, pad_id: int):
    import torch

    n = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[i, : len(s)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if types is not None and types and types[0] is not None:
        token_types = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, t in enumerate(types):
            token_types[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        batch["token_type_ids"] = token_types
    return batch


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, group: bool = True) -> list[np.ndarray]:
    """Batches of indices: a seeded shuffle, then (if `group`) sorted by length inside mega-batches
    of 50 batches so that a batch holds pairs of similar length (less padding); batch order shuffled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if group:
        mega = batch_size * 50
        chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group:
        full = [b for b in batches if len(b) == batch_size]
        rest = [b for b in batches if len(b) != batch_size]
        batches = [full[i] for i in rng.permutation(len(full))] + rest
    return batches


# ---------------------------------------------------------------------------------------------
# the module trained: backbone + (optional) tie parameter, one forward pass for a whole batch
# ---------------------------------------------------------------------------------------------
def _pairwise_module(backbone, with_ties: bool, log_nu0: float = -1.0):
    import torch

    class PairwiseRewardModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.tie_log_nu = torch.nn.Parameter(torch.tensor(float(log_nu0)), requires_grad=with_ties)

        def forward(self, **batch):
            return self.backbone(**batch).logits.squeeze(-1)

    return PairwiseRewardModule()


@dataclass
class EncodedPairs:
    chosen_ids: list
    chosen_types: list
    rejected_ids: list
    rejected_types: list
    is_tie: np.ndarray
    margin: np.ndarray
    lengths: np.ndarray
    truncation: TruncationCounts = field(default_factory=TruncationCounts)


class NeuralRewardModel:
    """A fine-tuned sequence-classification reward model (see the module docstring).

    `NeuralRewardModel(config)` or `NeuralRewardModel(model="path", epochs=2, ...)`;
    `fit(data, eval_data=None)` returns self; `reward(prompts, responses)`; `save`/`load`.
    """

    kind = "neural_reward_model"

    def __init__(self, config: NeuralRewardConfig | None = None, **overrides):
        config = config or NeuralRewardConfig()
        self.config = replace(config, **overrides) if overrides else config

    def get_params(self, deep: bool = True) -> dict:
        return {"config": self.config}

    # ---- inputs ---------------------------------------------------------------------------
    def _pair_encoder(self, tokenizer) -> PairEncoder:
        return PairEncoder(tokenizer, self.config.max_length)

    def _encode_side(self, prompts, responses, others):
        """Token ids of one side of the pairs: the reward model reads (prompt, response)."""
        return self.encoder_.encode(prompts, responses)

    def _encode_pairs(self, pairs: PreferencePairs) -> EncodedPairs:
        c_ids, c_types, c_counts = self._encode_side(pairs.prompts, pairs.chosen, pairs.rejected)
        r_ids, r_types, r_counts = self._encode_side(pairs.prompts, pairs.rejected, pairs.chosen)
        c_counts.add(r_counts)
        strength = np.nan_to_num(pairs.strength, nan=0.0)
        return EncodedPairs(
            c_ids, c_types, r_ids, r_types,
            is_tie=pairs.is_tie.copy(),
            margin=self.config.margin_scale * strength,
            lengths=np.maximum([len(x) for x in c_ids], [len(x) for x in r_ids]),
            truncation=c_counts,
        )

    # ---- loading the backbone -------------------------------------------------------------
    def _load_backbone(self, path: Path, trained: bool):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        config = check_model_folder(path, trained=trained)
        archs = config.architectures or []
        if (not trained and any(a.endswith("ForSequenceClassification") for a in archs)
                and config.num_labels != 1):
            raise NotASequenceClassifierError(
                f"{path} is a sequence classifier with {config.num_labels} outputs; a reward model needs 1"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "is_fast", True) or not hasattr(tokenizer, "backend_tokenizer"):
            raise NotASequenceClassifierError(f"{path}: a fast (tokenizers) tokenizer is required")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, use_safetensors=True)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    # ---- training -------------------------------------------------------------------------
    def fit(self, data: Any, eval_data: Any = None) -> "NeuralRewardModel":
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.config
        cfg.validate()
        keep_ties = cfg.ties == "davidson"
        pairs = data if isinstance(data, PreferencePairs) else preference_pairs(data, keep_ties=keep_ties)
        if eval_data is not None:
            eval_pairs = (eval_data if isinstance(eval_data, PreferencePairs)
                          else preference_pairs(eval_data, keep_ties=keep_ties))
            train_pairs = pairs
        elif cfg.eval_fraction > 0 and len(pairs) >= 10:
            rng = np.random.default_rng(cfg.seed)
            perm = rng.permutation(len(pairs))
            n_eval = max(1, int(round(cfg.eval_fraction * len(pairs))))
            eval_pairs, train_pairs = pairs.subset(np.sort(perm[:n_eval])), pairs.subset(np.sort(perm[n_eval:]))
        else:
            eval_pairs, train_pairs = None, pairs
        if not (~train_pairs.is_tie).any():
            raise NoUsablePairsError("the training split holds no wins (only ties)")

        accelerator = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no")
        world, rank = accelerator.num_processes, accelerator.process_index
        is_main = accelerator.is_main_process
        set_seed(cfg.seed)
        model_path = resolve_model_path(cfg.model)
        backbone, tokenizer = self._load_backbone(model_path, trained=False)
        if cfg.disable_dropout:
            for module in backbone.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        if cfg.gradient_checkpointing:
            backbone.gradient_checkpointing_enable()
        self.tokenizer_ = tokenizer
        self.encoder_ = self._pair_encoder(tokenizer)
        train = self._encode_pairs(train_pairs)
        evals = self._encode_pairs(eval_pairs) if eval_pairs is not None else None
        truncation = copy.deepcopy(train.truncation)
        if evals is not None:
            truncation.add(evals.truncation)
        with_ties = bool(train_pairs.n_ties > 0)
        n_ties = max(train_pairs.n_ties, 1)
        module = _pairwise_module(backbone, with_ties, log_nu0=math.log(n_ties / len(train_pairs)))

        batch_size = cfg.batch_size
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be divisible by the {world} processes")
        steps_per_epoch = sum(1 for b in length_grouped_batches(train.lengths, batch_size, 0, False) if len(b) >= world)
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        decay = [p for n, p in module.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in module.named_parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
        )
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * total_steps), max(total_steps, 1)
        )

        out_dir = Path(cfg.output_dir) if cfg.output_dir else None
        fingerprint = _fingerprint(cfg, train_pairs)
        state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "history": [], "fingerprint": fingerprint}
        resumed_from = None
        if out_dir is not None and cfg.resume:
            ckpt = latest_checkpoint(out_dir)
            if ckpt is not None:
                saved = json.loads((ckpt / STATE_FILE).read_text())
                if saved.get("fingerprint") != fingerprint:
                    raise ValueError(
                        f"{ckpt} was written for other data or settings; use a new output_dir or resume=False"
                    )
                from safetensors.torch import load_file

                module.load_state_dict(load_file(str(ckpt / "module.safetensors")))
                opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
                optimizer.load_state_dict(opt_state["optimizer"])
                scheduler.load_state_dict(opt_state["scheduler"])
                torch.set_rng_state(opt_state["rng"])
                state = saved
                resumed_from = str(ckpt)
        module, optimizer = accelerator.prepare(module, optimizer)

        progress = None
        if cfg.progress and is_main:
            from tqdm.auto import tqdm

            progress = tqdm(total=total_steps, initial=state["global_step"], desc="reward model", unit="step")
        t0 = time.perf_counter()
        pairs_seen = 0
        done = state["global_step"] >= total_steps
        for epoch in range(state["epoch"], cfg.epochs):
            if done:
                break
            batches = [b for b in length_grouped_batches(train.lengths, batch_size, cfg.seed + epoch, cfg.group_by_length)
                       if len(b) >= world]
            module.train()
            for step_in_epoch in range(state["step_in_epoch"], len(batches)):
                global_idx = batches[step_in_epoch]
                n_global = len(global_idx) - len(global_idx) % world
                local = global_idx[:n_global][rank::world]
                # gradient accumulation: micro-batches of the local pairs, each loss scaled so that
                # the summed gradient is the whole batch's; DDP syncs only on the last one
                micro_batches = [m for m in np.array_split(local, cfg.gradient_accumulation_steps) if len(m)]
                loss_sum = 0.0
                for k, micro in enumerate(micro_batches):
                    sync = contextlib.nullcontext() if k == len(micro_batches) - 1 else accelerator.no_sync(module)
                    with sync:
                        micro_sum = self._batch_loss_sum(module, train, micro, accelerator)
                        accelerator.backward(micro_sum * (world / n_global))
                    loss_sum = loss_sum + micro_sum.detach()
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                mean_loss = float(accelerator.reduce(loss_sum.detach().float(), reduction="sum")) / n_global
                pairs_seen += n_global
                state["global_step"] += 1
                state["step_in_epoch"] = step_in_epoch + 1
                state["history"].append({"step": state["global_step"], "epoch": epoch, "loss": mean_loss,
                                         "lr": scheduler.get_last_lr()[0], "micro_batches": len(micro_batches)})
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{mean_loss:.4f}")
                done = state["global_step"] >= total_steps
                end_of_epoch = state["step_in_epoch"] == len(batches)
                if end_of_epoch and evals is not None:
                    metrics = self._evaluate_encoded(module, evals, accelerator)
                    state["history"].append({"step": state["global_step"], "epoch": epoch, **metrics})
                if end_of_epoch:
                    state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                if out_dir is not None and (end_of_epoch or done or (cfg.save_steps and state["global_step"] % cfg.save_steps == 0)):
                    self._write_checkpoint(out_dir, accelerator, module, optimizer, scheduler, state)
                if done:
                    break
        train_seconds = time.perf_counter() - t0
        if progress is not None:
            progress.close()
        self.module_ = accelerator.unwrap_model(module)
        self.model_ = self.module_.backbone
        self.model_.eval()
        self.tie_log_nu_ = float(self.module_.tie_log_nu.detach()) if with_ties else None
        self.accelerator_ = accelerator
        self.version_hash_ = pairs.version_hash
        self.counts_ = train_pairs.counts()
        self.truncation_ = truncation.as_dict()
        self.history_ = state["history"]
        self.resumed_from_ = resumed_from
        self.metrics_ = {
            "train_pairs": len(train_pairs),
            "eval_pairs": 0 if eval_pairs is None else len(eval_pairs),
            "steps": state["global_step"],
            "train_seconds": train_seconds,
            "pairs_per_second": pairs_seen / train_seconds if train_seconds > 0 else None,
            **{f"truncation_{k}": v for k, v in truncation.as_dict().items()},
        }
        last_eval = [h for h in state["history"] if "eval_accuracy" in h]
        if last_eval:
            self.metrics_.update({k: v for k, v in last_eval[-1].items() if k.startswith("eval_")})
        if truncation.n_truncated and is_main:
            import warnings

            warnings.warn(
                f"{truncation.n_truncated} of {truncation.n_sequences} sequences were longer than "
                f"max_length={cfg.max_length} and were truncated (prompt kept its last tokens in "
                f"{truncation.n_prompt_truncated}, response its first tokens in {truncation.n_response_truncated})",
                stacklevel=2,
            )
        if out_dir is not None and is_main:
            self.save(out_dir)
        accelerator.wait_for_everyone()
        return self

    def _batch_loss_sum(self, module, enc: EncodedPairs, local: np.ndarray, accelerator):
        """Sum over the local pairs of the pairwise loss; chosen and rejected in one forward pass."""
        import torch

        from rm.losses import bradley_terry_loss, davidson_loss, reward_centering_loss

        cfg = self.config
        seqs = [enc.chosen_ids[i] for i in local] + [enc.rejected_ids[i] for i in local]
        types = [enc.chosen_types[i] for i in local] + [enc.rejected_types[i] for i in local]
        batch = pad_batch(seqs, types, self.encoder_.pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            rewards = module(**batch).float()
        r_c, r_r = rewards.chunk(2)
        margin = torch.as_tensor(enc.margin[local], dtype=torch.float32, device=r_c.device)
        margin = margin if cfg.margin_scale else None
        unwrapped = accelerator.unwrap_model(module)
        if unwrapped.tie_log_nu.requires_grad:
            is_tie = torch.as_tensor(enc.is_tie[local], device=r_c.device)
            per_pair = davidson_loss(r_c, r_r, is_tie, module_param(module, accelerator), margin, cfg.label_smoothing)
        else:
            per_pair = bradley_terry_loss(r_c, r_r, margin, cfg.label_smoothing)
        if cfg.center_coef:
            per_pair = per_pair + cfg.center_coef * reward_centering_loss(r_c, r_r)
        return per_pair.sum()

    def _evaluate_encoded(self, module, enc: EncodedPairs, accelerator) -> dict[str, float]:
        from accelerate.utils import gather_object

        world, rank = accelerator.num_processes, accelerator.process_index
        idx = np.arange(len(enc.is_tie))[rank::world]
        inner = accelerator.unwrap_model(module)
        r_c = self._rewards_from_ids(inner, [enc.chosen_ids[i] for i in idx], [enc.chosen_types[i] for i in idx], accelerator.device)
        r_r = self._rewards_from_ids(inner, [enc.rejected_ids[i] for i in idx], [enc.rejected_types[i] for i in idx], accelerator.device)
        rows = gather_object([(int(i), float(a), float(b)) for i, a, b in zip(idx, r_c, r_r)]) if world > 1 else list(zip(idx, r_c, r_r))
        rows = sorted(rows)
        diff = np.array([a - b for _, a, b in rows])
        wins = ~enc.is_tie[[i for i, _, _ in rows]]
        d = diff[wins]
        module.train()
        return {
            "eval_accuracy": float(((d > 0) + 0.5 * (d == 0)).mean()) if d.size else float("nan"),
            "eval_loss": float(np.logaddexp(0.0, -d).mean()) if d.size else float("nan"),
        }

    def _rewards_from_ids(self, module, ids: list, types: list, device) -> np.ndarray:
        import torch

        out = np.zeros(len(ids))
        if not ids:
            return out
        module.eval()
        order = np.argsort([-len(x) for x in ids], kind="stable")
        bs = self.config.eval_batch_size
        with torch.inference_mode():
            for start in range(0, len(ids), bs):
                sel = order[start : start + bs]
                batch = pad_batch([ids[i] for i in sel], [types[i] for i in sel], self.encoder_.pad_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                scores = module(**batch)
                scores = scores.logits.squeeze(-1) if hasattr(scores, "logits") else scores
                out[sel] = scores.float().cpu().numpy().reshape(-1)
        return out

    def _write_checkpoint(self, out_dir: Path, accelerator, module, optimizer, scheduler, state) -> None:
        import torch
        from safetensors.torch import save_file

        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt_root = out_dir / "checkpoints"
            ckpt_root.mkdir(parents=True, exist_ok=True)
            final = ckpt_root / f"step-{state['global_step']:08d}"
            tmp = ckpt_root / f".tmp-step-{state['global_step']:08d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            unwrapped = accelerator.unwrap_model(module)
            tensors = {k: v.detach().cpu().contiguous() for k, v in unwrapped.state_dict().items()}
            save_file(_dedupe_shared(tensors), str(tmp / "module.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
            (tmp / STATE_FILE).write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # a checkpoint exists complete or not at all
            old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
            for p in old[: max(0, len(old) - self.config.keep_checkpoints)]:
                shutil.rmtree(p, ignore_errors=True)
        accelerator.wait_for_everyone()

    # ---- inference ------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(data) or load(path) first")

    def reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """r(x, y) for each (prompt, response); the same truncation rule as in training."""
        self._check_fitted()
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        check_texts(responses, "response")
        ids, types, counts = self.encoder_.encode(prompts, responses)
        self.last_truncation_ = counts.as_dict()
        device = next(self.model_.parameters()).device
        return self._rewards_from_ids(self.model_, ids, types, device)

    def proba(self, prompts, responses_a, responses_b) -> np.ndarray:
        """P(a > b) = sigmoid(r(a) - r(b))."""
        d = self.reward(prompts, responses_a) - self.reward(prompts, responses_b)
        return 0.5 * (1.0 + np.tanh(0.5 * d))

    def predict_proba(self, data: Any) -> np.ndarray:
        from rm.pairs import proba_on_frame

        return proba_on_frame(self, data)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, metrics: dict | None = None) -> Path:
        """A plain Hugging Face folder (safetensors) plus `workbench_reward_model.json`."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(path, safe_serialization=True)
        self.tokenizer_.save_pretrained(path)
        meta = {
            "kind": self.kind,
            "config": asdict(self.config),
            "version_hash": self.version_hash_,
            "tie_log_nu": self.tie_log_nu_,
            "counts": self.counts_,
            "truncation": self.truncation_,
            "truncation_rule": "prompt keeps its last tokens, response its first; response keeps >= half the budget",
            "metrics": {**getattr(self, "metrics_", {}), **(metrics or {})},
            "history": self.history_,
        }
        (path / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NeuralRewardModel":
        path = Path(path)
        meta_file = path / METADATA_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if meta and meta.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {cls.kind}")
        config = NeuralRewardConfig.from_dict(meta["config"]) if meta else NeuralRewardConfig(model=str(path))
        self = cls(config)
        self.model_, self.tokenizer_ = self._load_backbone(path, trained=True)
        self.model_.eval()
        self.encoder_ = self._pair_encoder(self.tokenizer_)
        self.tie_log_nu_ = meta.get("tie_log_nu")
        self.version_hash_ = meta.get("version_hash")
        self.counts_ = meta.get("counts", {})
        self.truncation_ = meta.get("truncation", {})
        self.metrics_ = meta.get("metrics", {})
        self.history_ = meta.get("history", [])
        return self

    @property
    def history_frame(self):
        import polars as pl

        return pl.from_dicts(self.history_, infer_schema_length=None) if self.history_ else pl.DataFrame()


def module_param(module, accelerator):
    return accelerator.unwrap_model(module).tie_log_nu


def _dedupe_shared(tensors: dict) -> dict:
    seen, out = {}, {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            out[k] = v.clone()
        else:
            out[k] = v
            if key is not None:
                seen[key] = k
    return out


def _fingerprint(cfg: NeuralRewardConfig, pairs: PreferencePairs) -> str:
    import hashlib

    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "progress", "resume", "max_steps", "eval_batch_size")}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for p, c, r, t in zip(pairs.prompts, pairs.chosen, pairs.rejected, pairs.is_tie):
        h.update(f"{len(p)}:{p}{len(c)}:{c}{len(r)}:{r}{int(t)}".encode())
    return h.hexdigest()


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists() and (p / "module.safetensors").exists())
    return done[-1] if done else None
