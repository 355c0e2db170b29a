"""Make the project's demo data: prompts, candidate responses with a hidden true quality, and
labels from simulated annotators. Every text is generated here from templates (nothing copied).

    python data/make_demo.py            # writes data/demo/{responses,labels}.jsonl

Deterministic (seeded): the same script always writes the same files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

SEED = 20261122
OUT = Path(__file__).resolve().parent / "demo"

TOPICS = {
    "coding": ["a hash map", "binary search", "a race condition", "recursion", "a REST API", "unit tests",
               "garbage collection", "a database index", "version control", "type hints"],
    "math": ["prime numbers", "the Pythagorean theorem", "compound interest", "probability of two dice",
             "a derivative", "the mean and the median", "logarithms", "matrix multiplication"],
    "writing": ["a cover letter", "a product announcement", "a thank-you note", "a short story opening",
                "a meeting summary", "an apology email", "a haiku about autumn", "a toast for a wedding"],
    "advice": ["sleeping better", "learning a language", "saving money", "preparing for an interview",
               "running a first 5k", "keeping houseplants alive", "focusing at work", "moving to a new city"],
    "science": ["photosynthesis", "how vaccines work", "plate tectonics", "why the sky is blue",
                "black holes", "the water cycle", "DNA replication", "climate and weather"],
}
ASKS = ["Explain {t} to a {a}.", "Give me a short overview of {t} for a {a}.", "Write about {t} for a {a}.",
        "What should a {a} know about {t}?", "Help a {a} understand {t}."]
AUDIENCES = ["beginner", "ten-year-old", "busy manager", "student", "curious reader", "new colleague"]

# Generators with a base quality: the demo's "models".
MODELS = {"atlas-7b": 0.9, "birch-3b": 0.2, "cedar-13b": 1.3, "dune-1b": -0.6}

OPENERS = ["Sure.", "Good question.", "Here is a clear answer.", "Let me walk you through it.", "In short:"]
FILLER = ["It is worth noting that this depends on context.", "Many people find this confusing at first.",
          "There are a few ways to look at it.", "This comes up often in practice."]
WRONG = ["Some say the opposite is true, and that is fine too.", "Details do not really matter here.",
         "Honestly, nobody fully knows.", "Just search online for the rest."]


def response_text(rng: random.Random, topic: str, audience: str, quality: float) -> str:
    """A response whose visible features follow its hidden quality (structure, steps, accuracy)."""
    parts = [rng.choice(OPENERS)]
    n_points = max(1, int(round(2 + quality + rng.gauss(0, 0.7))))
    if quality > 0.5:
        parts.append(f"For a {audience}, {topic} comes down to {n_points} ideas:")
        parts += [f"{i + 1}. Point {i + 1} about {topic}, with a concrete example." for i in range(n_points)]
    else:
        parts.append(f"{topic.capitalize()} is a topic with several sides.")
        parts += [rng.choice(FILLER) for _ in range(n_points)]
    if quality < 0:
        parts.append(rng.choice(WRONG))
    if quality > 1.2:
        parts.append(f"To check your understanding, try explaining {topic} back in one sentence.")
    return "\n".join(parts)


def main(n_prompts: int = 300, n_annotators: int = 6, labels_per_prompt: int = 6) -> None:
    rng = random.Random(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    responses, labels = [], []
    annotators = [(f"demo-annotator-{i + 1}", 1.0 if i < n_annotators - 1 else 0.25) for i in range(n_annotators)]
    for _ in range(n_prompts):
        category = rng.choice(sorted(TOPICS))
        topic, audience = rng.choice(TOPICS[category]), rng.choice(AUDIENCES)
        prompt = rng.choice(ASKS).format(t=topic, a=audience)
        cands = []
        for model, base in MODELS.items():
            q = base + rng.gauss(0, 0.6)
            text = response_text(rng, topic, audience, q)
            cands.append((model, text, round(q, 4)))
            responses.append({"prompt": prompt, "category": category, "model": model, "response": text, "true_quality": round(q, 4)})
        for _ in range(labels_per_prompt):
            (ma, ta, qa), (mb, tb, qb) = rng.sample(cands, 2)
            if ta == tb:
                continue
            annotator, skill = rng.choice(annotators)
            gap = (qa - qb) * 2.0 * skill
            p_a = 1 / (1 + math.exp(-gap))
            if abs(qa - qb) < 0.08 and rng.random() < 0.5:
                label = "tie"
            else:
                label = "a" if rng.random() < p_a else "b"
            labels.append({
                "prompt": prompt, "category": category, "response_a": ta, "model_a": ma, "response_b": tb,
                "model_b": mb, "label": label, "annotator_id": annotator, "shown_left": rng.choice("ab"),
                "source": "simulated", "duration_ms": int(rng.lognormvariate(9.3, 0.5)),
            })
    with open(OUT / "responses.jsonl", "w") as f:
        for r in responses:
            f.write(json.dumps(r) + "\n")
    with open(OUT / "labels.jsonl", "w") as f:
        for r in labels:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(responses)} responses and {len(labels)} labels to {OUT}")


if __name__ == "__main__":
    main()
