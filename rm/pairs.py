"""Turn a version (or a comparisons frame) into the preference pairs that reward models fit on.

Every reward and preference model in `rm` reads its training data through `preference_pairs`,
so the rules live in one place:

- `label == "a"` / `"b"`: a win; the pair is oriented as (chosen, rejected).
- `label == "tie"`: kept as a tie when the model can fit ties (Davidson), otherwise dropped and
  counted in `PreferencePairs.n_dropped_ties`.
- `label == "both_bad"`: dropped and counted in `n_dropped_both_bad`.
- empty or whitespace-only response texts are an error, never silently dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

REQUIRED_COLUMNS = ("prompt", "response_a", "response_b", "label")
LABELS = ("a", "b", "tie", "both_bad")


class NoUsablePairsError(ValueError):
    """The data holds no pair a model can learn from (after dropping ties / both_bad)."""


class EmptyTextError(ValueError):
    """A response (or a text to score) is empty."""


def comparisons_frame(data: Any) -> pl.DataFrame:
    """A polars comparisons frame from a workbench `Version`, a polars or pandas frame or a
    `datasets.Dataset` (``workbench.frames.as_comparisons``)."""
    from workbench.frames import as_comparisons

    return as_comparisons(data)


def version_hash(data: Any) -> str | None:
    """The content hash of a workbench `Version`; None for a plain frame."""
    value = getattr(data, "hash", None)
    return value if isinstance(value, str) else None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class PreferencePairs:
    """Oriented pairs: `chosen[i]` beat `rejected[i]` for `prompts[i]` unless `is_tie[i]`."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    is_tie: np.ndarray
    strength: np.ndarray  # NaN where unknown
    category: list[str | None]
    comparison_id: list[Any]
    n_input_rows: int = 0
    n_dropped_ties: int = 0
    n_dropped_both_bad: int = 0
    version_hash: str | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_ties(self) -> int:
        return int(self.is_tie.sum())

    def subset(self, index) -> "PreferencePairs":
        index = np.asarray(index, dtype=np.int64)
        return PreferencePairs(
            prompts=[self.prompts[i] for i in index],
            chosen=[self.chosen[i] for i in index],
            rejected=[self.rejected[i] for i in index],
            is_tie=self.is_tie[index],
            strength=self.strength[index],
            category=[self.category[i] for i in index],
            comparison_id=[self.comparison_id[i] for i in index],
            n_input_rows=len(index),
            version_hash=self.version_hash,
        )

    def counts(self) -> dict[str, int]:
        return {
            "n_input_rows": int(self.n_input_rows),
            "n_pairs": len(self),
            "n_ties": self.n_ties,
            "n_dropped_ties": int(self.n_dropped_ties),
            "n_dropped_both_bad": int(self.n_dropped_both_bad),
        }


def check_texts(texts: list[str], what: str) -> None:
    """Raise `EmptyTextError` naming the first empty text."""
    for i, text in enumerate(texts):
        if text is None or not isinstance(text, str) or not text.strip():
            raise EmptyTextError(f"{what} {i} is empty; every response needs text to be scored")


def preference_pairs(data: Any, *, keep_ties: bool) -> PreferencePairs:
    """Read a version / frame into oriented `PreferencePairs` (see the module docstring)."""
    frame = comparisons_frame(data)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"comparisons frame lacks column(s) {missing}; it has {frame.columns}")
    n_rows = frame.height
    labels = frame["label"].cast(pl.Utf8).to_list()
    bad = sorted({lab for lab in labels if lab not in LABELS}, key=str)
    if bad:
        raise ValueError(f"unknown label value(s) {bad}; expected one of {LABELS}")
    prompts_all = frame["prompt"].fill_null("").cast(pl.Utf8).to_list()
    a_all = frame["response_a"].cast(pl.Utf8).to_list()
    b_all = frame["response_b"].cast(pl.Utf8).to_list()
    strength_all = (
        frame["strength"].cast(pl.Float64).to_numpy() if "strength" in frame.columns else np.full(n_rows, np.nan)
    )
    category_all = frame["category"].cast(pl.Utf8).to_list() if "category" in frame.columns else [None] * n_rows
    ids_all = frame["comparison_id"].to_list() if "comparison_id" in frame.columns else list(range(n_rows))

    prompts, chosen, rejected, tie, strength, category, ids = [], [], [], [], [], [], []
    n_ties_dropped = n_both_bad = 0
    for i, lab in enumerate(labels):
        if lab == "both_bad":
            n_both_bad += 1
            continue
        if lab == "tie" and not keep_ties:
            n_ties_dropped += 1
            continue
        for what, text in (("response_a", a_all[i]), ("response_b", b_all[i])):
            if text is None or not text.strip():
                raise EmptyTextError(
                    f"row {i} (comparison_id={ids_all[i]!r}): {what} is empty; "
                    "remove or fix the row before fitting a reward model"
                )
        win, lose = (a_all[i], b_all[i]) if lab in ("a", "tie") else (b_all[i], a_all[i])
        prompts.append(prompts_all[i] or "")
        chosen.append(win)
        rejected.append(lose)
        tie.append(lab == "tie")
        s = strength_all[i]
        strength.append(np.nan if s is None else s)
        category.append(category_all[i])
        ids.append(ids_all[i])
    if not prompts:
        raise NoUsablePairsError(
            f"no usable pairs: {n_rows} row(s), {n_both_bad} both_bad and "
            f"{n_ties_dropped} tie(s) dropped (ties are kept only by models with a tie parameter)"
        )
    if all(tie):
        raise NoUsablePairsError(f"no usable pairs: all {len(tie)} kept rows are ties; a reward needs wins")
    return PreferencePairs(
        prompts=prompts,
        chosen=chosen,
        rejected=rejected,
        is_tie=np.asarray(tie, dtype=bool),
        strength=np.asarray(strength, dtype=np.float64),
        category=category,
        comparison_id=ids,
        n_input_rows=n_rows,
        n_dropped_ties=n_ties_dropped,
        n_dropped_both_bad=n_both_bad,
        version_hash=version_hash(data),
    )


def train_test_split(data: Any, test_fraction: float = 0.2, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A seeded split of a comparisons frame by prompt (rows of one prompt stay together)."""
    frame = comparisons_frame(data)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    key = "prompt_id" if "prompt_id" in frame.columns else "prompt"
    groups = frame[key].unique(maintain_order=True).to_list()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    n_test = max(1, int(round(test_fraction * len(groups))))
    test_keys = {groups[i] for i in order[:n_test]}
    is_test = frame[key].is_in(list(test_keys))
    return frame.filter(~is_test), frame.filter(is_test)


def proba_on_frame(model: Any, data: Any) -> np.ndarray:
    """``model.proba`` on every row of a comparisons frame or version: P(response_a > response_b)."""
    frame = comparisons_frame(data)
    return model.proba(frame["prompt"].fill_null("").to_list(), frame["response_a"].to_list(), frame["response_b"].to_list())
