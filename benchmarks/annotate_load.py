"""Load test of the annotation server: simulated annotators over HTTP against a local server on SQLite.

    python benchmarks/annotate_load.py --annotators 32 --seconds 60              # saturation
    python benchmarks/annotate_load.py --annotators 32 --seconds 60 --rate 110   # latency at 110 labels/s

Builds a fresh store (prompts x responses -> a pool of pairs), creates the accounts, starts
``workbench serve`` in a subprocess, and runs the annotators as asyncio tasks (httpx) that each
log in and then loop: POST /api/label (which acknowledges the label and returns the next pair).
It reports labels/s, the submit-to-next-pair latency (p50/p99), the server's peak memory, and
then checks the store against what was acknowledged: lost labels (acknowledged, absent),
duplicated labels (one assignment recorded twice) and unacknowledged extras. About 5% of
submissions are sent twice (a double click) to exercise idempotency. It also reports the server's
CPU time per label and the load generator's (both share the machine's cores).

Without ``--rate`` the annotators label back to back with no think time, so the run measures the
server's saturation throughput and its latency is queueing (32 requests always in flight: mean
latency = 32 / throughput by Little's law). With ``--rate R`` each annotator pauses between labels
(exponential, mean annotators/R seconds), which measures the latency annotators see at an
offered load of R labels/s.

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


async def annotator(client, name: str, password: str, deadline: float, seed: int, out: dict, think_s: float = 0.0) -> None:
    import httpx

    rng = random.Random(seed)
    r = await client.post("/api/login", json={"name": name, "password": password})
    r.raise_for_status()
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    item = (await client.get("/api/next", headers=headers)).json()["item"]
    next_at = time.perf_counter()
    while item is not None and time.perf_counter() < deadline:
        body = {"assignment_id": item["assignment_id"], "choice": rng.choice(["left", "right", "tie", "both_bad"])}
        t0 = time.perf_counter()
        try:
            r = await client.post("/api/label", json=body, headers=headers)
        except httpx.TransportError as exc:  # a dropped connection: resend (a label is idempotent)
            out["transport_retries"].append(repr(exc)[:200])
            r = await client.post("/api/label", json=body, headers=headers)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            out["errors"].append(r.text[:200])
            break
        data = r.json()
        out["latency"].append(dt)
        timing = r.headers.get("server-timing", "")
        if "dur=" in timing:
            out["server_ms"].append(float(timing.split("dur=")[1].split(";")[0].split(",")[0]))
        out["acked"].append(data["comparison_id"])
        if rng.random() < 0.05:  # a double click: must not record a second label
            r2 = await client.post("/api/label", json=body, headers=headers)
            out["resent"] += 1
            if r2.status_code != 200 or r2.json()["comparison_id"] != data["comparison_id"]:
                out["errors"].append("resend answered differently")
        item = data["next"]
        if think_s:  # each annotator submits as a Poisson stream (exponential gaps), whatever the latency
            next_at += rng.expovariate(1.0 / think_s)
            await asyncio.sleep(max(0.0, min(next_at, deadline) - time.perf_counter()))
    if item is None:
        out["drained"] += 1


async def drive(url: str, logins: dict[str, str], seconds: float, rate: float = 0.0) -> dict:
    import httpx

    out = {"latency": [], "server_ms": [], "acked": [], "errors": [], "transport_retries": [], "resent": 0, "drained": 0}
    limits = httpx.Limits(max_connections=len(logins) + 4, max_keepalive_connections=len(logins) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        think_s = len(logins) / rate if rate > 0 else 0.0
        await asyncio.gather(*[annotator(client, n, pw, deadline, i, out, think_s) for i, (n, pw) in enumerate(logins.items())])
        out["elapsed"] = time.perf_counter() - t0
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


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
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered load in labels/s over all annotators (each thinks for annotators/rate s on average "
                         "between labels); 0 (default): no think time, i.e. the server's saturation throughput")
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
        cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
        out = asyncio.run(drive(url, logins, args.seconds, args.rate))
        cpu1, own1 = cpu_seconds(proc.pid), time.process_time()
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
    mode = f"offered {args.rate:g} labels/s" if args.rate > 0 else "no think time (saturation)"
    print(f"annotators {args.annotators}, {mode}, {out['elapsed']:.1f} s: {n} labels acknowledged, {rate:.1f} labels/s "
          f"(goal >= 100); {out['resent']} resends")
    if n:
        print(f"submit-to-next-pair latency: p50 {np.percentile(lat, 50):.1f} ms, p90 {np.percentile(lat, 90):.1f} ms, "
              f"p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms (goal p99 < 150 ms)")
        if out["server_ms"]:
            srv = np.array(out["server_ms"])
            print(f"  of which inside the server (Server-Timing): p50 {np.percentile(srv, 50):.1f} ms, "
                  f"p90 {np.percentile(srv, 90):.1f} ms, p99 {np.percentile(srv, 99):.1f} ms")
    print(f"store check after SIGKILL: lost {lost}, duplicated {duplicated}, unacknowledged extras {extra} (in flight at the kill)")
    if cpu0 is not None and cpu1 is not None and n:
        print(f"server CPU: {cpu1 - cpu0:.1f} s over the run, {1000 * (cpu1 - cpu0) / n:.2f} ms per label "
              f"({(cpu1 - cpu0) / out['elapsed']:.2f} cores busy); load generator (same machine): "
              f"{1000 * (own1 - own0) / n:.2f} ms per label ({(own1 - own0) / out['elapsed']:.2f} cores busy)")
    print(f"server peak RSS: {rss:.0f} MiB" if rss else "server peak RSS: n/a")
    if out["transport_retries"]:
        print(f"{len(out['transport_retries'])} requests resent after a dropped connection, first: {out['transport_retries'][0]}")
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
