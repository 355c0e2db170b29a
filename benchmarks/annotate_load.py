"""Load test of the annotation server: simulated annotators over HTTP against a local server on SQLite.

    python benchmarks/annotate_load.py --annotators 32 --seconds 60

Builds a fresh store (prompts x responses -> a pool of pairs), creates the accounts, starts
``workbench serve`` in a subprocess, and runs the annotators as asyncio tasks (httpx) that each
log in and then loop: POST /api/label (which acknowledges the label and returns the next pair).
It reports labels/s, the submit-to-next-pair latency (p50/p99), the server's peak memory, and
then checks the store against what was acknowledged: lost labels (acknowledged, absent),
duplicated labels (one assignment recorded twice) and unacknowledged extras. About 5% of
submissions are sent twice (a double click) to exercise idempotency.

Goals (issue 4): p99 < 150 ms, >= 100 labels/s, 0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_store(db: Path, n_prompts: int, n_responses: int, n_annotators: int, overlap: int) -> dict[str, str]:
    import workbench
    from workbench import assign, auth

    store = workbench.open(db)
    for i in range(n_prompts):
        pid = store.add_prompt(f"Prompt {i}: explain idea {i} to a colleague.", category=["code", "chat", "math"][i % 3])
        for j in range(n_responses):
            store.add_response(pid, f"Response {j} to prompt {i}.\n\n```python\nprint({i} * {j})\n```", model=f"model-{j}")
    assign.build_pairs(store)
    assign.save_config(store, assign.AssignConfig(strategy="balanced", overlap=overlap))
    logins = {f"load{i:02d}": auth.create_account(store, f"load{i:02d}", "annotator") for i in range(n_annotators)}
    store.close()
    return logins


async def annotator(client, name: str, password: str, deadline: float, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    r = await client.post("/api/login", json={"name": name, "password": password})
    r.raise_for_status()
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    item = (await client.get("/api/next", headers=headers)).json()["item"]
    while item is not None and time.perf_counter() < deadline:
        body = {"assignment_id": item["assignment_id"], "choice": rng.choice(["left", "right", "tie", "both_bad"])}
        t0 = time.perf_counter()
        r = await client.post("/api/label", json=body, headers=headers)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            out["errors"].append(r.text[:200])
            break
        data = r.json()
        out["latency"].append(dt)
        out["acked"].append(data["comparison_id"])
        if rng.random() < 0.05:  # a double click: must not record a second label
            r2 = await client.post("/api/label", json=body, headers=headers)
            out["resent"] += 1
            if r2.status_code != 200 or r2.json()["comparison_id"] != data["comparison_id"]:
                out["errors"].append("resend answered differently")
        item = data["next"]
    if item is None:
        out["drained"] += 1


async def drive(url: str, logins: dict[str, str], seconds: float) -> dict:
    import httpx

    out = {"latency": [], "acked": [], "errors": [], "resent": 0, "drained": 0}
    limits = httpx.Limits(max_connections=len(logins) + 4, max_keepalive_connections=len(logins) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*[annotator(client, n, pw, deadline, i, out) for i, (n, pw) in enumerate(logins.items())])
        out["elapsed"] = time.perf_counter() - t0
    return out


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--prompts", type=int, default=3000)
    ap.add_argument("--responses", type=int, default=4, help="responses per prompt (pairs per prompt = r(r-1)/2)")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the store's folder")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="wb-load-"))
    db = tmp / "load.db"
    t = time.perf_counter()
    logins = build_store(db, args.prompts, args.responses, args.annotators, args.overlap)
    n_pairs = args.prompts * args.responses * (args.responses - 1) // 2
    print(f"store: {db} ({n_pairs} pairs, overlap {args.overlap}, {args.annotators} annotators; built in {time.perf_counter() - t:.1f} s)")

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "--db", str(db), "serve", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(url + "/api/progress", timeout=1).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start: " + (tmp / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        out = asyncio.run(drive(url, logins, args.seconds))
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)  # a kill, not a clean stop: acknowledged labels must be on disk
        proc.wait(10)
        log.close()

    import polars as pl

    import workbench

    store = workbench.open(db)
    events = store.events()
    labels = events.filter(pl.col("kind") == "label")
    acked = set(out["acked"])
    stored = labels["comparison_id"].to_list()
    lost = len(acked - set(stored))
    duplicated = len(stored) - len(set(stored))
    tokens = labels["client_token"].to_list()
    duplicated += len(tokens) - len(set(tokens))
    extra = len(set(stored) - acked)
    store.close()

    lat = np.array(out["latency"]) * 1000
    n = len(out["acked"])
    rate = n / out["elapsed"] if out["elapsed"] else float("nan")
    print(f"annotators {args.annotators}, {out['elapsed']:.1f} s: {n} labels acknowledged, {rate:.1f} labels/s "
          f"(goal >= 100); {out['resent']} resends")
    if n:
        print(f"submit-to-next-pair latency: p50 {np.percentile(lat, 50):.1f} ms, p90 {np.percentile(lat, 90):.1f} ms, "
              f"p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms (goal p99 < 150 ms)")
    print(f"store check after SIGKILL: lost {lost}, duplicated {duplicated}, unacknowledged extras {extra} (in flight at the kill)")
    print(f"server peak RSS: {rss:.0f} MiB" if rss else "server peak RSS: n/a")
    if out["errors"]:
        print(f"errors: {len(out['errors'])}, first: {out['errors'][0]}")
    if out["drained"]:
        print(f"{out['drained']} annotators emptied their queue before the time was up (use more --prompts)")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if (lost == 0 and duplicated == 0 and not out["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
