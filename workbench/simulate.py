"""A simulator of preference labelling with known truth.

Prompts get candidate responses with hidden true utilities; a pool of annotators labels pairs of
them under stated models, so every diagnostic can be scored against the truth:

- **honest**: Bradley-Terry with a temperature, ``P(a) = sigmoid((u_a - u_b) / T + length_bias *
  log(len_a / len_b))``, plus random flips at ``flip_rate``;
- **fatigued**: honest, with a flip probability that rises through each session, up to
  ``fatigue_rate`` more at the end of a session of ``session_length`` labels;
- **spammer**: random clicks (a or b with equal odds), very fast;
- **adversarial**: inverted Bradley-Terry (prefers the worse response);
- every annotator may have a **left-side bias** ``b``: with probability ``|2b - 1|`` they click
  the left (``b > 0.5``) or right side whatever the texts say, so their share of left picks on
  randomly sided pairs is ``b``;
- **ties** below a utility gap: ``|u_a - u_b| < tie_gap`` gives ``tie`` (not for spammers).

Use it from Python without a store::

    from workbench.simulate import SimulationConfig, simulate
    sim = simulate(SimulationConfig(n_prompts=50, spammer_share=0.05, flip_rate=0.1, seed=1))
    sim.comparisons()        # the comparisons table (workbench.frames.COMPARISONS_SCHEMA)
    sim.truth_labels         # comparison_id, flipped, correct, ...
    sim.truth_annotators     # annotator_id, kind and the parameters of its model
    sim.truth_responses      # response_id, utility, length
    sim.to_store(store, snapshot="sim-1")   # write it as source="simulated"; truth beside it

or from the command line: ``workbench simulate --config sim.yaml --snapshot sim-1``.
The ids in these frames are the store's own (content-addressed), so the truth joins a version
read back from the store on ``comparison_id`` and ``response_id``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from . import ids
from .frames import COMPARISONS_SCHEMA, MESSAGES

KINDS = ("honest", "fatigued", "spammer", "adversarial")

_VOCAB = {
    "coding": "function loop variable compile error test index array pointer module class return branch merge".split(),
    "math": "number prime proof equation integral matrix vector angle theorem series limit ratio sum".split(),
    "writing": "sentence story letter tone draft paragraph voice reader title edit style verse".split(),
    "advice": "plan habit budget sleep routine goal schedule focus health advice step friend".split(),
    "science": "cell energy atom planet climate gene force wave molecule orbit species light".split(),
}


def _default_categories() -> dict[str, float]:
    return {"coding": 0.3, "math": 0.2, "writing": 0.2, "advice": 0.15, "science": 0.15}


def _default_models() -> dict[str, float]:
    return {"atlas-7b": 0.5, "birch-3b": -0.3, "cedar-13b": 1.0, "dune-1b": -1.0, "elm-70b": 1.5}


@dataclass
class SimulationConfig:
    """What to simulate. Load from YAML with :meth:`from_yaml`; ``print`` shows it back."""

    seed: int = 0
    # prompts and responses
    n_prompts: int = 100
    responses_per_prompt: int = 4
    categories: dict[str, float] = field(default_factory=_default_categories)  # category -> share
    models: dict[str, float] = field(default_factory=_default_models)  # generator -> base utility
    utility_sd: float = 1.0  # spread of a response's utility around its generator's base
    length_words: float = 60.0  # median response length in words
    length_sd: float = 0.5  # log-normal spread of lengths
    length_utility: float = 0.0  # how much longer responses are better (utility per log-length unit)
    # which pairs get labels
    n_pairs: int = 1000  # pairs drawn (a pair may be drawn twice)
    labels_per_pair: int = 3  # distinct annotators per pair
    repeat_rate: float = 0.0  # share of labels that the same annotator sees again, sides swapped
    gold_rate: float = 0.0  # share of pairs with a gold label (the true answer, by "gold-expert")
    # annotator pool
    n_annotators: int = 20
    spammer_share: float = 0.0
    adversarial_share: float = 0.0
    fatigued_share: float = 0.0
    temperature: float = 0.5  # Bradley-Terry temperature of honest annotators
    temperature_spread: float = 0.0  # log-normal spread of temperatures across annotators
    flip_rate: float = 0.0  # random flips (all but spammers)
    left_bias: float = 0.5  # share of left picks on randomly sided pairs (0.5: none)
    length_bias: float = 0.0  # logit shift per unit of log(len_a / len_b) (> 0 prefers longer)
    tie_gap: float = 0.0  # |u_a - u_b| below this gives a tie
    fatigue_rate: float = 0.3  # extra flip probability at the end of a session (fatigued only)
    session_length: int = 50
    median_duration_ms: float = 25_000.0
    spammer_duration_ms: float = 1_500.0
    start: str = "2026-01-01T00:00:00+00:00"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"simulation config: {msg}")

        for name in ("n_prompts", "responses_per_prompt", "n_pairs", "labels_per_pair", "n_annotators", "session_length"):
            v = getattr(self, name)
            check(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        check(self.responses_per_prompt >= 2, "responses_per_prompt must be >= 2 (a pair needs two responses)")
        check(self.labels_per_pair <= self.n_annotators, "labels_per_pair cannot exceed n_annotators (distinct annotators per pair)")
        check(self.n_prompts * self.responses_per_prompt <= 5_000_000, "at most 5,000,000 responses")
        check(self.n_pairs * self.labels_per_pair <= 20_000_000, "at most 20,000,000 labels")
        for name in ("repeat_rate", "gold_rate", "spammer_share", "adversarial_share", "fatigued_share", "flip_rate", "left_bias", "fatigue_rate"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0, f"{name} must be in [0, 1], got {v!r}")
        check(self.spammer_share + self.adversarial_share + self.fatigued_share <= 1.0, "annotator shares add up to more than 1")
        for name in ("temperature", "length_words", "median_duration_ms", "spammer_duration_ms"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and np.isfinite(v) and v > 0, f"{name} must be a number > 0, got {v!r}")
        for name in ("utility_sd", "length_sd", "temperature_spread", "tie_gap"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0, f"{name} must be a number >= 0, got {v!r}")
        for name in ("length_utility", "length_bias"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and np.isfinite(v), f"{name} must be a finite number, got {v!r}")
        check(isinstance(self.categories, dict) and len(self.categories) > 0 and all(isinstance(k, str) and k and isinstance(v, (int, float)) and v >= 0 for k, v in self.categories.items()) and sum(self.categories.values()) > 0,
              "categories must map names to non-negative shares with a positive sum")
        check(isinstance(self.models, dict) and len(self.models) > 0 and all(isinstance(k, str) and k and isinstance(v, (int, float)) and np.isfinite(v) for k, v in self.models.items()),
              "models must map generator names to base utilities")
        try:
            _parse_start(self.start)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"simulation config: start must be an ISO date-time, got {self.start!r}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimulationConfig":
        if not isinstance(data, dict):
            raise ValueError("a simulation config is a mapping of field names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"simulation config: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike) -> "SimulationConfig":
        """From a YAML file (or a YAML text)."""
        import yaml

        p = Path(path_or_text)
        text = p.read_text() if ("\n" not in str(path_or_text) and p.exists()) else str(path_or_text)
        data = yaml.safe_load(text) or {}
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """A short hash of the config: the same config always simulates the same labels."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _parse_start(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(str(s).replace("Z", "+00:00"))
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


@dataclass
class Simulation:
    """A simulated labelling job: what the store would hold, and the hidden truth beside it.

    ``candidates``: one row per response (prompt_id, prompt, category, response_id, response,
    model, utility). ``labels``: one row per label, in the store's input shape plus ids.
    ``truth_labels``: comparison_id, annotator_id, kind, flipped (a random or fatigue flip was
    applied), lazy (a side-bias click), correct (the label matches the sign of the utility gap;
    ties count as correct when the gap is below ``tie_gap``), utility_gap (u_a - u_b).
    ``truth_annotators``: annotator_id, kind, temperature, flip_rate, left_bias, length_bias,
    fatigue_rate, median_duration_ms. ``truth_responses``: response_id, utility, length_words.
    """

    config: SimulationConfig
    candidates: pl.DataFrame
    labels: pl.DataFrame
    truth_labels: pl.DataFrame
    truth_annotators: pl.DataFrame

    @property
    def truth_responses(self) -> pl.DataFrame:
        return self.candidates.select("response_id", "prompt_id", "model", "utility", "length_words")

    @property
    def true_flip_rate(self) -> float:
        """Share of decisive labels (a/b) by non-spammers that a random or fatigue flip changed."""
        t = self.truth_labels.join(self.labels.select("comparison_id", "label"), on="comparison_id")
        t = t.filter(pl.col("label").is_in(["a", "b"]) & ~pl.col("kind").is_in(["spammer", "gold"]))
        return float(t["flipped"].mean()) if t.height else 0.0

    def comparisons(self) -> pl.DataFrame:
        """The labels as a comparisons table, as a version of the store would read them."""
        lab = self.labels
        msgs = pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content"))).cast(MESSAGES)
        out = lab.with_columns(msgs.alias("prompt_messages"), pl.lit(None, dtype=pl.String).alias("rationale"),
                               pl.lit(None, dtype=pl.Float64).alias("strength"))
        return out.select([pl.col(c).cast(t) for c, t in COMPARISONS_SCHEMA.items()]).sort(["created_at", "comparison_id"])

    def input_frame(self) -> pl.DataFrame:
        """The labels in :data:`workbench.frames.INPUT_SCHEMA` shape (for ``store.add_comparisons``)."""
        from .frames import to_input_frame

        cols = {c: self.labels[c] for c in ("prompt", "category", "response_a", "model_a", "response_b", "model_b", "label",
                                             "annotator_id", "shown_left", "source", "gold", "duration_ms", "created_at", "client_token")}
        return to_input_frame(cols, n=self.labels.height)

    def to_store(self, store: Any, *, snapshot: str | None = None, truth_path: str | os.PathLike | None = None,
                 description: str | None = None) -> "SimulationReceipt":
        """Write candidates (true utility in their metadata) and labels (source="simulated").

        The truth goes to ``truth_path`` (default: ``<store files>/simulations/<config digest>``).
        With ``snapshot``, a version of that name is taken (of the whole store's labels).
        """
        cands = self.candidates.select(
            "prompt", "category", "response", "model",
            pl.struct(pl.col("utility").alias("true_utility"), pl.lit(self.config.digest()).alias("simulation")).struct.json_encode().alias("metadata"),
        )
        added = store.add_candidates(cands)
        report = store.add_comparisons(self.input_frame(), source="simulated", path=f"simulation:{self.config.digest()}", format="simulated")
        path = Path(truth_path) if truth_path is not None else Path(store.files_dir) / "simulations" / self.config.digest()
        self.save_truth(path)
        version = None
        if snapshot:
            version = store.snapshot(snapshot, description=description or f"simulated labels (config {self.config.digest()})")
        return SimulationReceipt(report=report, candidates_added=added, truth_path=path, version=version)

    def save_truth(self, path: str | os.PathLike) -> Path:
        """Write config.yaml and the truth frames (Parquet) into a folder."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.yaml").write_text(self.config.to_yaml())
        self.truth_responses.write_parquet(p / "truth_responses.parquet")
        self.truth_annotators.write_parquet(p / "truth_annotators.parquet")
        self.truth_labels.write_parquet(p / "truth_labels.parquet")
        return p


@dataclass(frozen=True)
class SimulationReceipt:
    report: Any  # workbench.store.ImportReport
    candidates_added: dict
    truth_path: Path
    version: Any = None

    def __str__(self) -> str:
        s = f"{self.report}\ntruth written to {self.truth_path}"
        if self.version is not None:
            s += f"\nversion {self.version.name} ({self.version.hash[:12]})"
        return s


def load_truth(path: str | os.PathLike) -> dict[str, Any]:
    """Read a truth folder written by :meth:`Simulation.save_truth`."""
    p = Path(path)
    if not (p / "truth_labels.parquet").exists():
        raise FileNotFoundError(f"{p}: no simulation truth here (expected truth_labels.parquet)")
    return {
        "config": SimulationConfig.from_yaml(p / "config.yaml"),
        "responses": pl.read_parquet(p / "truth_responses.parquet"),
        "annotators": pl.read_parquet(p / "truth_annotators.parquet"),
        "labels": pl.read_parquet(p / "truth_labels.parquet"),
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _annotator_pool(cfg: SimulationConfig, rng: np.random.Generator) -> pl.DataFrame:
    n = cfg.n_annotators
    counts = {k: int(round(getattr(cfg, f"{k}_share") * n)) for k in ("spammer", "adversarial", "fatigued")}
    kinds = np.array(["spammer"] * counts["spammer"] + ["adversarial"] * counts["adversarial"] + ["fatigued"] * counts["fatigued"]
                     + ["honest"] * max(0, n - sum(counts.values())))[:n]
    kinds = kinds[rng.permutation(n)]
    temp = cfg.temperature * np.exp(rng.normal(0.0, cfg.temperature_spread, n)) if cfg.temperature_spread else np.full(n, cfg.temperature)
    spam = kinds == "spammer"
    width = len(str(n))
    return pl.DataFrame({
        "annotator_id": [f"sim-{i:0{width}d}" for i in range(n)],
        "kind": kinds.tolist(),
        "temperature": np.where(spam, np.inf, temp),
        "flip_rate": np.where(spam, 0.0, cfg.flip_rate),
        "left_bias": np.full(n, float(cfg.left_bias)),
        "length_bias": np.where(spam, 0.0, cfg.length_bias),
        "fatigue_rate": np.where(kinds == "fatigued", cfg.fatigue_rate, 0.0),
        "median_duration_ms": np.where(spam, cfg.spammer_duration_ms, cfg.median_duration_ms * np.exp(rng.normal(0, 0.3, n))),
    })


def _texts(prefixes: list[str], vocab_rows: list[list[str]], n_words: np.ndarray, rng: np.random.Generator) -> list[str]:
    out = []
    for prefix, vocab, k in zip(prefixes, vocab_rows, n_words.tolist()):
        start = int(rng.integers(len(vocab)))
        seq = (vocab[start:] + vocab[:start]) * (k // len(vocab) + 1)
        out.append(prefix + " ".join(seq[:k]) + ".")
    return out


def simulate(config: SimulationConfig | dict | None = None, **overrides: Any) -> Simulation:
    """Simulate prompts, responses, annotators and labels (vectorized; 1M labels in seconds)."""
    if config is None:
        config = SimulationConfig(**overrides)
    elif isinstance(config, dict):
        config = SimulationConfig.from_dict({**config, **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg = config
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    digest = cfg.digest()

    # -- prompts
    cats = list(cfg.categories)
    shares = np.array([cfg.categories[c] for c in cats], dtype=float)
    p_cat = rng.choice(len(cats), size=cfg.n_prompts, p=shares / shares.sum())
    vocab_of = [_VOCAB.get(c, sorted(set(c.lower().replace("_", " ").split() + _VOCAB["writing"]))) for c in cats]
    prompt_text = _texts([f"[{cats[c]} #{i}] Please help with: " for i, c in enumerate(p_cat)], [vocab_of[c] for c in p_cat],
                         rng.integers(5, 12, cfg.n_prompts), rng)
    prompt_ids = [ids.prompt_id_of(ids.prompt_key(t, None)) for t in prompt_text]

    # -- responses
    R = cfg.responses_per_prompt
    models = list(cfg.models)
    base = np.array([cfg.models[m] for m in models], dtype=float)
    if len(models) >= R:
        model_idx = np.argsort(rng.random((cfg.n_prompts, len(models))), axis=1)[:, :R]
    else:
        model_idx = (np.arange(R)[None, :] + rng.integers(len(models), size=(cfg.n_prompts, 1))) % len(models)
    model_idx = model_idx.reshape(-1)
    resp_prompt = np.repeat(np.arange(cfg.n_prompts), R)
    log_len = np.log(cfg.length_words) + rng.normal(0.0, cfg.length_sd, resp_prompt.size)
    n_words = np.maximum(3, np.round(np.exp(log_len))).astype(int)
    utility = base[model_idx] + rng.normal(0.0, cfg.utility_sd, resp_prompt.size) + cfg.length_utility * (np.log(n_words) - np.log(cfg.length_words))
    resp_text = _texts([f"Answer {k % R + 1} from {models[m]}: " for k, m in enumerate(model_idx)], [vocab_of[p_cat[p]] for p in resp_prompt], n_words, rng)
    resp_ids = [ids.response_id_of(prompt_ids[p], t, models[m]) for p, t, m in zip(resp_prompt.tolist(), resp_text, model_idx.tolist())]
    candidates = pl.DataFrame({
        "prompt_id": [prompt_ids[p] for p in resp_prompt], "prompt": [prompt_text[p] for p in resp_prompt],
        "category": [cats[p_cat[p]] for p in resp_prompt], "response_id": resp_ids, "response": resp_text,
        "model": [models[m] for m in model_idx], "utility": utility, "length_words": n_words,
    })

    # -- pairs and annotators
    pool = _annotator_pool(cfg, rng)
    kinds = pool["kind"].to_numpy()
    k = cfg.labels_per_pair
    n_ann = cfg.n_annotators
    pair_prompt = rng.integers(cfg.n_prompts, size=cfg.n_pairs)
    i = rng.integers(R, size=cfg.n_pairs)
    j = (i + rng.integers(1, R, size=cfg.n_pairs)) % R
    ra, rb = pair_prompt * R + i, pair_prompt * R + j
    a0 = rng.integers(n_ann, size=cfg.n_pairs)
    step = rng.integers(1, max(1, (n_ann - 1) // max(1, k - 1)) + 1, size=cfg.n_pairs) if k > 1 else np.ones(cfg.n_pairs, dtype=int)
    ann = ((a0[:, None] + np.arange(k)[None, :] * step[:, None]) % n_ann).reshape(-1)
    pair_of = np.repeat(np.arange(cfg.n_pairs), k)
    ra, rb = ra[pair_of], rb[pair_of]
    n_first = ann.size
    repeat = np.zeros(n_first, dtype=bool)
    if cfg.repeat_rate > 0:
        rep_idx = np.flatnonzero(rng.random(n_first) < cfg.repeat_rate)
        ann = np.concatenate([ann, ann[rep_idx]])
        ra, rb = np.concatenate([ra, ra[rep_idx]]), np.concatenate([rb, rb[rep_idx]])
        pair_of = np.concatenate([pair_of, pair_of[rep_idx]])
        repeat = np.concatenate([repeat, np.ones(rep_idx.size, dtype=bool)])
    else:
        rep_idx = np.zeros(0, dtype=int)
    n = ann.size
    shown_left_a = rng.random(n) < 0.5
    if rep_idx.size:
        shown_left_a[n_first:] = ~shown_left_a[rep_idx]  # the repeat shows the sides swapped

    # order of work: each annotator's labels in a random order, in sessions
    when = rng.random(n)
    if rep_idx.size:  # a repeat comes after the first showing
        when[n_first:] = when[rep_idx] + (1 - when[rep_idx]) * rng.random(rep_idx.size)
    order = np.lexsort((when, ann))
    pos = np.empty(n, dtype=np.int64)
    counts = np.bincount(ann, minlength=n_ann)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos[order] = np.arange(n) - np.repeat(starts, counts)
    session_pos = pos % cfg.session_length

    # -- labels
    ua, ub = utility[ra], utility[rb]
    gap = ua - ub
    temp = pool["temperature"].to_numpy()[ann]
    len_ratio = np.log(n_words[ra] / n_words[rb])
    logit = np.where(np.isfinite(temp), gap / np.where(np.isfinite(temp), temp, 1.0), 0.0) + pool["length_bias"].to_numpy()[ann] * len_ratio
    kind = kinds[ann]
    logit = np.where(kind == "adversarial", -logit, logit)
    choose_a = rng.random(n) < _sigmoid(logit)
    flip_p = np.clip(pool["flip_rate"].to_numpy()[ann] + pool["fatigue_rate"].to_numpy()[ann] * (session_pos + 1) / cfg.session_length, 0.0, 0.5)
    flipped = rng.random(n) < flip_p
    tie = (np.abs(gap) < cfg.tie_gap) & (kind != "spammer")
    flipped &= ~tie
    choose_a ^= flipped
    lb = pool["left_bias"].to_numpy()[ann]
    lazy = rng.random(n) < np.abs(2 * lb - 1)
    lazy_a = np.where(lb > 0.5, shown_left_a, ~shown_left_a)
    choose_a = np.where(lazy, lazy_a, choose_a)
    tie &= ~lazy
    flipped &= ~lazy
    label = np.where(tie, "tie", np.where(choose_a, "a", "b"))
    correct = np.where(np.abs(gap) < cfg.tie_gap, label == "tie", np.where(gap > 0, label == "a", label == "b"))

    # durations and timestamps
    med = pool["median_duration_ms"].to_numpy()[ann]
    sd = np.where(kind == "spammer", 0.3, 0.5)
    duration = np.maximum(200, np.round(med * np.exp(rng.normal(0.0, sd, n)))).astype(np.int64)
    t0 = _parse_start(cfg.start)
    dur_sorted = duration[order]
    cs = np.cumsum(dur_sorted)
    prev = np.concatenate([[0], cs[:-1]])
    cum = cs - np.repeat(prev[np.minimum(starts, n - 1)], counts)
    session_breaks = (pos[order] // cfg.session_length) * 3_600_000  # an hour between sessions
    ann_offset = rng.integers(0, 7 * 86_400_000, n_ann)[ann[order]]
    created_ms = np.empty(n, dtype=np.int64)
    created_ms[order] = cum + session_breaks + ann_offset
    created_at = pl.Series("created_at", created_ms * 1000 + int(t0.timestamp() * 1_000_000), dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")

    tokens = [f"sim:{digest}:{x}" for x in range(n)]
    gold = np.zeros(n, dtype=bool)
    ann_ids = pool["annotator_id"].to_numpy()[ann]
    frames = {
        "label": label, "annotator_id": ann_ids, "shown_left": np.where(shown_left_a, "a", "b"),
        "duration_ms": duration, "gold": gold, "client_token": tokens, "ra": ra, "rb": rb,
    }
    truth = {"kind": kind, "flipped": flipped, "lazy": lazy, "correct": correct, "utility_gap": gap, "repeat": repeat,
             "session_position": pos}
    labels = pl.DataFrame(frames).with_columns(created_at)
    truth_frame = pl.DataFrame(truth)
    if cfg.gold_rate > 0:
        gold_pairs = np.flatnonzero(rng.random(cfg.n_pairs) < cfg.gold_rate)
        g_ra, g_rb = pair_prompt[gold_pairs] * R + i[gold_pairs], pair_prompt[gold_pairs] * R + j[gold_pairs]
        g_gap = utility[g_ra] - utility[g_rb]
        g_label = np.where(np.abs(g_gap) < cfg.tie_gap, "tie", np.where(g_gap > 0, "a", "b"))
        m = gold_pairs.size
        gl = pl.DataFrame({
            "label": g_label, "annotator_id": ["gold-expert"] * m, "shown_left": ["a"] * m,
            "duration_ms": np.full(m, 60_000, dtype=np.int64), "gold": np.ones(m, dtype=bool),
            "client_token": [f"sim:{digest}:gold:{x}" for x in range(m)], "ra": g_ra, "rb": g_rb,
        }).with_columns(pl.lit(t0).dt.cast_time_unit("us").alias("created_at"))
        labels = pl.concat([labels, gl.select(labels.columns)])
        truth_frame = pl.concat([truth_frame, pl.DataFrame({
            "kind": ["gold"] * m, "flipped": np.zeros(m, dtype=bool), "lazy": np.zeros(m, dtype=bool), "correct": np.ones(m, dtype=bool),
            "utility_gap": g_gap, "repeat": np.zeros(m, dtype=bool), "session_position": np.zeros(m, dtype=np.int64)})])
    n_all = labels.height
    cid = [ids.comparison_id_of(t) for t in labels["client_token"].to_list()]
    ra_all, rb_all = labels["ra"].to_numpy(), labels["rb"].to_numpy()
    cand = candidates
    take = lambda col, idx: cand[col].gather(idx)  # noqa: E731
    labels = labels.with_columns(
        pl.Series("comparison_id", cid, dtype=pl.String),
        take("prompt_id", ra_all).alias("prompt_id"), take("prompt", ra_all).alias("prompt"), take("category", ra_all).alias("category"),
        take("response_id", ra_all).alias("response_a_id"), take("response", ra_all).alias("response_a"), take("model", ra_all).alias("model_a"),
        take("response_id", rb_all).alias("response_b_id"), take("response", rb_all).alias("response_b"), take("model", rb_all).alias("model_b"),
        pl.lit("simulated").alias("source"),
    ).drop("ra", "rb")
    truth_labels = truth_frame.with_columns(labels["comparison_id"], labels["annotator_id"]).select(
        "comparison_id", "annotator_id", "kind", "flipped", "lazy", "correct", "utility_gap", "repeat", "session_position")
    assert labels.height == n_all
    truth_annotators = pool
    if cfg.gold_rate > 0:
        truth_annotators = pl.concat([pool, pl.DataFrame({
            "annotator_id": ["gold-expert"], "kind": ["gold"], "temperature": [0.0], "flip_rate": [0.0], "left_bias": [0.5],
            "length_bias": [0.0], "fatigue_rate": [0.0], "median_duration_ms": [60_000.0]})])
    return Simulation(config=cfg, candidates=candidates, labels=labels, truth_labels=truth_labels, truth_annotators=truth_annotators)
