"""HH-RLHF (`{"chosen", "rejected"}` transcripts) as a comparisons frame, for tests and benchmarks.

Uses the workbench importer `workbench.importers.read_hh_rlhf` when it exists. Until then a
small private parser stands in: the prompt is the shared transcript up to and including the
last "\\n\\nAssistant:" turn, the responses are what follows; the chosen response is put on side
"a" for even rows and "b" for odd rows so that both labels occur.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"


def hh_rlhf_data_dir() -> Path:
    """`<repo>/../shared/data/hh_rlhf_harmless_base_test`."""
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh_rlhf_harmless_base_test"


def load_hh_rlhf(path: str | Path | None = None) -> pl.DataFrame:
    """HH-RLHF as a comparisons-shaped frame (prompt text, response_a/b, label, ...)."""
    path = Path(path) if path is not None else hh_rlhf_data_dir()
    try:
        from workbench.ids import render_messages  # type: ignore
        from workbench.importers import read_hh_rlhf  # type: ignore
    except ImportError:
        read_hh_rlhf = None
    if read_hh_rlhf is not None:
        files = sorted(path.glob("*.jsonl*")) if path.is_dir() else [path]
        frames = []
        for file in files:
            rows, _rejects = read_hh_rlhf(file)
            messages = [json.loads(m) for m in rows["prompt_messages"].to_list()]
            prompts = [render_messages(m) for m in messages]
            frames.append(
                rows.select("response_a", "response_b", "label").with_columns(
                    pl.Series("prompt", prompts),
                    pl.Series("prompt_id", [hashlib.sha256(p.encode()).hexdigest()[:16] for p in prompts]),
                    pl.Series("comparison_id", [f"hh-{file.name}-{i}" for i in rows["line"].to_list()]),
                    pl.lit(None, dtype=pl.String).alias("category"),
                    pl.lit(None, dtype=pl.Float64).alias("strength"),
                    pl.lit("hh-rlhf").alias("annotator_id"),
                )
            )
        return pl.concat(frames)
    return _parse_hh_rlhf(path)


def _split_transcript(chosen: str, rejected: str) -> tuple[str, str, str]:
    cut = chosen.rfind(ASSISTANT)
    if cut < 0 or not rejected.startswith(chosen[: cut + len(ASSISTANT)]):
        # the two differ earlier than the last assistant turn: use their common prefix
        n = 0
        for x, y in zip(chosen, rejected):
            if x != y:
                break
            n += 1
        cut = chosen.rfind(ASSISTANT, 0, n)
        if cut < 0:
            raise ValueError("chosen and rejected share no prompt ending in an assistant turn")
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def _messages(prompt: str) -> list[dict]:
    messages = []
    for part in prompt.split("\n\n"):
        if part.startswith("Human:"):
            messages.append({"role": "user", "content": part[len("Human:"):].strip()})
        elif part.startswith("Assistant:"):
            messages.append({"role": "assistant", "content": part[len("Assistant:"):].strip()})
        elif messages:
            messages[-1]["content"] += "\n\n" + part
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def _parse_hh_rlhf(path: Path) -> pl.DataFrame:
    files = sorted(path.glob("*.jsonl.gz")) + sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    rows = []
    now = datetime(2022, 4, 12, tzinfo=timezone.utc)
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                prompt_raw, chosen, rejected = _split_transcript(record["chosen"], record["rejected"])
                messages = _messages(prompt_raw)
                prompt = "\n\n".join(
                    f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages
                ) + "\n\nAssistant:"
                i = len(rows)
                a, b, label = (chosen, rejected, "a") if i % 2 == 0 else (rejected, chosen, "b")
                pid = hashlib.sha256(prompt.encode()).hexdigest()[:16]
                rows.append(
                    {
                        "comparison_id": f"hh-{file.name}-{line_no}",
                        "prompt_id": pid,
                        "prompt": prompt,
                        "prompt_messages": messages,
                        "category": None,
                        "response_a_id": hashlib.sha256(a.encode()).hexdigest()[:16],
                        "response_a": a,
                        "model_a": None,
                        "response_b_id": hashlib.sha256(b.encode()).hexdigest()[:16],
                        "response_b": b,
                        "model_b": None,
                        "label": label,
                        "strength": None,
                        "annotator_id": "hh-rlhf",
                        "shown_left": None,
                        "source": "import",
                        "gold": False,
                        "rationale": None,
                        "duration_ms": None,
                        "created_at": now,
                    }
                )
    return pl.DataFrame(rows, infer_schema_length=None)
