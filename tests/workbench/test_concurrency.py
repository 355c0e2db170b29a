"""Concurrent writers (8 processes) on SQLite and PostgreSQL: nothing lost, nothing duplicated.

Each process appends its own labels (one ``add_label`` call each, the UI's path), resubmits some
of them, and all processes race on a shared set of client tokens carrying the same label. The
default size keeps the test fast; ``WORKBENCH_CONCURRENCY_LABELS=1000`` runs the full 8 x 1,000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[2]
WORKERS = 8
LABELS_PER_WORKER = int(os.environ.get("WORKBENCH_CONCURRENCY_LABELS", "150"))
SHARED_TOKENS = 40

WORKER = textwrap.dedent("""
    import json, os, sys, time
    import workbench
    url, files, worker, n, shared, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    store = workbench.open(url, files_dir=files)
    pairs = json.loads(open(os.path.join(files, "pairs.json")).read())
    while not os.path.exists(go):
        time.sleep(0.005)
    created = resubmitted = shared_created = 0
    for i in range(n):
        p, a, b = pairs[(worker * n + i) % len(pairs)]
        r = store.add_label(p, a, b, "ab"[i % 2], f"w{worker}", client_token=f"w{worker}-{i}", duration_ms=i)
        created += r.created
        if i % 10 == 0:  # a resubmission (a retried HTTP request): a no-op
            again = store.add_label(p, a, b, "ab"[i % 2], f"w{worker}", client_token=f"w{worker}-{i}", duration_ms=i)
            assert not again.created and again.event_id == r.event_id
            resubmitted += 1
        if i < shared:  # every worker sends the same token with the same label
            p2, a2, b2 = pairs[i % len(pairs)]
            s = store.add_label(p2, a2, b2, "tie", "w0", client_token=f"shared-{i}")
            shared_created += s.created
    print(json.dumps({"created": created, "resubmitted": resubmitted, "shared_created": shared_created}))
""")


def test_concurrent_writers_lose_and_duplicate_nothing(store, store_url, tmp_path):
    files = tmp_path / "files"
    pairs = []
    for k in range(30):
        p = store.add_prompt(f"prompt {k}")
        rs = [store.add_response(p, f"response {k}-{j}", model=f"m{j}") for j in range(3)]
        pairs += [(p, rs[0], rs[1]), (p, rs[1], rs[2])]
    for w in range(WORKERS):
        store.add_annotator(f"w{w}")
    (files / "pairs.json").write_text(json.dumps(pairs))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, store_url, str(files), str(w), str(LABELS_PER_WORKER), str(SHARED_TOKENS), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for w in range(WORKERS)
    ]
    time.sleep(1.0)  # let every worker import and open the store
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["created"] == LABELS_PER_WORKER for r in results)
    shared = min(SHARED_TOKENS, LABELS_PER_WORKER)
    assert sum(r["shared_created"] for r in results) == shared  # each shared token won exactly once

    events = store.events()
    assert events.height == WORKERS * LABELS_PER_WORKER + shared
    assert events["client_token"].n_unique() == events.height
    assert events["event_id"].n_unique() == events.height
    expected = {f"w{w}-{i}" for w in range(WORKERS) for i in range(LABELS_PER_WORKER)} | {f"shared-{i}" for i in range(shared)}
    assert set(events["client_token"]) == expected
    mine = events.filter(pl.col("client_token").str.starts_with("w"))
    # Every label kept what its writer sent.
    worker_of = mine["client_token"].str.extract(r"^w(\d+)-").cast(pl.Int64)
    index_of = mine["client_token"].str.extract(r"-(\d+)$").cast(pl.Int64)
    assert (mine["annotator_id"] == ("w" + worker_of.cast(pl.String))).all()
    assert (mine["duration_ms"] == index_of).all()
    v = store.snapshot("after-race")
    assert v.n_comparisons == events.height
    assert store.stats()["live_comparisons"] == events.height
