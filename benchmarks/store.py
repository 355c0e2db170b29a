"""Store benchmark: bulk import, snapshot + read back, single-label append latency.

    python benchmarks/store.py                      # 1M comparisons on SQLite (+ PostgreSQL if up)
    python benchmarks/store.py --n 200000 --no-pg   # smaller, SQLite only

Figures printed (wall and process CPU time, since the machine may be shared):
- bulk import rate (comparisons/s) of ``store.add_comparisons`` on a synthetic frame with
  realistic reuse (``n/20`` prompts with 6 responses each from 6 models, 200 annotators), and
  of re-importing the same frame (everything already there);
- the reference floor: plain ``sqlite3.executemany`` of the same event rows into a bare table
  with the same indexes (no ids, no validation, no texts);
- time to snapshot the store into a version (in the process that imported, and on SQLite again
  in fresh processes, as the CLI or a new notebook takes it: the median of three, one after
  another) and to read the version back (``to_polars``);
- single-label append latency (``store.add_label``) p50/p99 with 8 concurrent writer processes.

Goals on a 2-core machine: import >= 100k comparisons/s, snapshot of 1M < 3 s, p99 < 10 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import workbench  # noqa: E402

WORDS = ("the a model answer question helpful harmless honest reason step code explain because "
         "therefore however example data label prefer better worse clear concise").split()
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:54329/workbench"


def synthetic_comparisons(n: int, seed: int = 0, prompts_per: int = 20, responses_per_prompt: int = 6, annotators: int = 200) -> pl.DataFrame:
    """``n`` comparisons over ``n / prompts_per`` prompts, each with a fixed set of responses."""
    rng = np.random.default_rng(seed)
    n_prompts = max(2, n // prompts_per)
    words = np.array(WORDS)

    def texts(k: int, length: int) -> list[str]:
        idx = rng.integers(0, len(words), size=(k, length))
        return [f"#{i} " + " ".join(row) for i, row in enumerate(words[idx])]

    prompt_text = pl.Series(texts(n_prompts, 30))
    response_text = pl.Series(texts(n_prompts * responses_per_prompt, 60))
    models = pl.Series([f"model-{i}" for i in range(responses_per_prompt)])
    p = rng.integers(0, n_prompts, n)
    ra = rng.integers(0, responses_per_prompt, n)
    rb = (ra + rng.integers(1, responses_per_prompt, n)) % responses_per_prompt
    return pl.DataFrame({
        "prompt": prompt_text.gather(p),
        "response_a": response_text.gather(p * responses_per_prompt + ra), "model_a": models.gather(ra),
        "response_b": response_text.gather(p * responses_per_prompt + rb), "model_b": models.gather(rb),
        "label": np.array(["a", "b", "tie", "both_bad"])[rng.choice(4, n, p=[0.45, 0.45, 0.07, 0.03])],
        "annotator_id": pl.Series([f"ann-{i}" for i in range(annotators)]).gather(rng.integers(0, annotators, n)),
        "duration_ms": rng.integers(500, 60_000, n),
        "shown_left": np.array(["a", "b"])[rng.integers(0, 2, n)],
    })


class Timer:
    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def raw_sqlite_floor(events: pl.DataFrame, path: str) -> float:
    """Seconds for plain executemany of the event rows into a table with the same indexes."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    cols = events.columns
    con.execute(f"CREATE TABLE e (event_id INTEGER PRIMARY KEY, {', '.join(cols)}, UNIQUE (client_token))")
    con.execute("CREATE INDEX e1 ON e (comparison_id, event_id)")
    con.execute("CREATE INDEX e2 ON e (annotator_id, event_id)")
    t = time.perf_counter()
    con.execute("BEGIN")
    con.executemany(f"INSERT INTO e ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", events.iter_rows())
    con.execute("COMMIT")
    con.close()
    return time.perf_counter() - t


def _writer(url: str, files: str, worker: int, n: int, pairs: list, go: str, out: str) -> None:
    store = workbench.open(url, files_dir=files)
    Path(out + ".ready").touch()
    while not os.path.exists(go):
        time.sleep(0.002)
    lat = []
    for i in range(n):
        p, a, b = pairs[(worker * 7919 + i) % len(pairs)]
        t = time.perf_counter()
        store.add_label(p, a, b, "ab"[i % 2], f"w{worker}", client_token=f"bench-{worker}-{i}-{os.getpid()}", duration_ms=i)
        lat.append(time.perf_counter() - t)
    Path(out).write_text(json.dumps(lat))
    # Stay until the parent says every writer is done: a Python process's exit (the interpreter's
    # and the libraries' teardown, 0.1-0.2 s of CPU) would compete with the other writers' labels
    # on this machine's two cores, and their latency would measure it.
    while not os.path.exists(go + ".done"):
        time.sleep(0.002)


def append_latency(store: "workbench.Store", url: str, files: str, writers: int, per_writer: int) -> tuple[float, float, float]:
    """p50 and p99 of one ``add_label`` call (ms) and the labels per second of all writers
    together. The writer processes start (imports, opening the store) before the clock does, and
    exit after it stopped."""
    live = store.live().select("prompt_id", "response_a_id", "response_b_id").head(5000)
    pairs = [list(r) for r in live.iter_rows()]
    for w in range(writers):
        store.add_annotator(f"w{w}")
    tmp = tempfile.mkdtemp()
    go = os.path.join(tmp, "go")
    outs = [os.path.join(tmp, f"{w}.json") for w in range(writers)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, files, w, per_writer, pairs, go, outs[w])) for w in range(writers)]
    for p in procs:
        p.start()
    try:
        _wait_for([o + ".ready" for o in outs], procs)
        time.sleep(0.5)
        t = time.perf_counter()
        Path(go).touch()
        _wait_for(outs, procs)
        elapsed = time.perf_counter() - t
    finally:
        Path(go + ".done").touch()
        for p in procs:
            p.join()
    lat = np.concatenate([json.loads(Path(o).read_text()) for o in outs]) * 1000
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), writers * per_writer / elapsed


def _wait_for(paths: list[str], procs: list) -> None:
    while not all(os.path.exists(p) for p in paths):
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError("a writer process failed")
        time.sleep(0.002)


FRESH_RUNS = 3  # fresh-process snapshots, one after another: this machine's noise moves one by +-0.5 s


def fresh_process_snapshot(url: str, files: str) -> tuple[float, float]:
    """Seconds of ``store.snapshot`` in a new Python process (its imports done before the clock
    starts), and the MiB its resident memory grew to above what it held before."""
    import subprocess

    code = (
        "import sys, time, resource, workbench, numpy, polars, pyarrow, pyarrow.parquet\n"
        f"s = workbench.open({url!r}, files_dir={files!r})\n"
        "before = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "t = time.perf_counter()\n"
        "s.snapshot(f'bench-fresh-{time.time_ns()}')\n"
        "peak = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"  # ru_maxrss may be the parent's (vfork)
        "print(time.perf_counter() - t, (peak - before) / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]))
    secs, grew = out.stdout.strip().splitlines()[-1].split()
    return float(secs), float(grew)


def first_touch_cost(mib: int = 256) -> tuple[float, float]:
    """Milliseconds per MiB to fault in fresh memory in a new process, and to write it again.
    On a virtual machine whose host takes back free memory (a balloon's free page reporting),
    the first figure is many times the second, and it weighs on every step that allocates."""
    import subprocess

    code = (
        "import time, numpy as np\n"
        f"t = time.perf_counter(); a = np.ones({mib} << 17); first = time.perf_counter() - t\n"
        "t = time.perf_counter(); a[:] = 2.0; again = time.perf_counter() - t\n"
        f"print(first * 1000 / {mib}, again * 1000 / {mib})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, again = out.stdout.split()
    return float(first), float(again)


def bench(label: str, url: str, files: str, frame: pl.DataFrame, writers: int, per_writer: int, floor: bool,
          chunk_rows: int | None = None, import_only: bool = False) -> None:
    n = frame.height
    store = workbench.open(url, files_dir=files)
    print(f"\n== {label}: {store!r}")
    with Timer() as t:
        report = store.add_comparisons(frame, chunk_rows=chunk_rows)
    assert report.labels_added == n, report
    print(f"import      {n:>9,} comparisons  wall {t.wall:6.2f} s  cpu {t.cpu:6.2f} s  -> {n / t.wall:>9,.0f} comparisons/s "
          f"(cpu-bound rate {n / t.cpu:,.0f}/s)  [{report.prompts_added:,} prompts, {report.responses_added:,} responses]")
    with Timer() as c:
        store.wait_for_checkpoint()
    if store.dialect == "sqlite":  # PostgreSQL checkpoints on its own schedule
        print(f"            then its WAL checkpoint (copying the pages into the database file) ran on in the "
              f"background for another {c.wall:.2f} s (import + checkpoint: {n / (t.wall + c.wall):,.0f} "
              "comparisons/s)")
    with Timer() as t:
        again = store.add_comparisons(frame, chunk_rows=chunk_rows)
    assert again.labels_added == 0
    print(f"re-import   {n:>9,} comparisons  wall {t.wall:6.2f} s  cpu {t.cpu:6.2f} s  -> {n / t.wall:>9,.0f} comparisons/s (adds nothing)")
    if floor:
        from workbench.bulk import import_tables, prepare_comparisons
        from workbench.frames import INPUT_SCHEMA, to_input_frame

        f = to_input_frame({c: frame[c] for c in frame.columns if c in INPUT_SCHEMA}, n=n).with_columns(
            pl.col("source").fill_null("import"), pl.col("gold").fill_null(False))
        events = import_tables(prepare_comparisons(f)[0], "imp_floor")["label_events"].with_columns(
            pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M:%S%.6f"))
        secs = raw_sqlite_floor(events, os.path.join(files, "floor.db"))
        print(f"reference   {n:>9,} event rows   wall {secs:6.2f} s  -> {n / secs:>9,.0f} rows/s "
              "(plain sqlite3 executemany, same indexes, ids precomputed)")
    if import_only:
        store.close()
        return
    with Timer() as t:
        v = store.snapshot(f"bench-{int(time.time())}")
    print(f"snapshot    {v.n_comparisons:>9,} comparisons  wall {t.wall:6.2f} s  cpu {t.cpu:6.2f} s  "
          f"(parquet {v.path.stat().st_size / 2**20:,.0f} MiB)")
    if store.dialect == "sqlite":
        runs = [fresh_process_snapshot(url, files) for _ in range(FRESH_RUNS)]
        secs = sorted(r[0] for r in runs)
        print(f"snapshot    {v.n_comparisons:>9,} comparisons  wall {secs[len(secs) // 2]:6.2f} s  in a fresh process (as `workbench snapshot` "
              f"or a new notebook takes it; the one above ran in the process that imported): the median of {FRESH_RUNS} "
              f"one after another ({', '.join(f'{x:.2f}' for x in secs)} s); its memory grew {max(r[1] for r in runs):,.0f} MiB")
        first, again = first_touch_cost()
        print(f"memory      this machine faults in fresh memory at {first:.2f} ms/MiB, and writes it again at {again:.2f} ms/MiB")
    fresh = workbench.open(url, files_dir=files).version(v.name)
    with Timer() as t:
        back = fresh.to_polars()
    assert back.height == v.n_comparisons
    print(f"read back   {back.height:>9,} comparisons  wall {t.wall:6.2f} s  cpu {t.cpu:6.2f} s  (verifies the file's SHA-256)")
    with Timer() as t:
        fresh.verify(deep=True)
    print(f"deep verify {back.height:>9,} comparisons  wall {t.wall:6.2f} s  (recomputes the content hash)")
    if writers:
        p50, p99, rate = append_latency(store, url, files, writers, per_writer)
        print(f"append      {writers} writers x {per_writer} labels: p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({rate:,.0f} labels/s in all)")
    print(f"peak RSS    {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--labels-per-writer", type=int, default=250)
    ap.add_argument("--pg", default=None, help="PostgreSQL URL (default: $WORKBENCH_PG_URL or scripts/postgres.sh's)")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--chunk-rows", type=int, default=None,
                    help="rows per chunk of a pipelined SQLite import (default: workbench.bulk.PIPELINE_CHUNK_ROWS; "
                         "a value >= n/2 writes the import in one piece)")
    ap.add_argument("--import-only", action="store_true", help="only the import and re-import (and the floor)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with Timer() as t:
        frame = synthetic_comparisons(args.n)
    print(f"synthetic frame: {frame.height:,} rows, {frame['prompt'].n_unique():,} prompts, "
          f"{pl.concat([frame['response_a'], frame['response_b']]).n_unique():,} responses ({t.wall:.1f} s)")
    with tempfile.TemporaryDirectory() as d:
        bench("SQLite", os.path.join(d, "bench.db"), os.path.join(d, "files"), frame, args.writers, args.labels_per_writer, not args.no_floor,
              args.chunk_rows, args.import_only)
    if args.no_pg:
        return
    url = args.pg or os.environ.get("WORKBENCH_PG_URL") or PG_DEFAULT
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        schema = f"bench_{os.getpid()}"
        with engine.begin() as c:
            c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # noqa: BLE001
        print(f"\n(PostgreSQL skipped: {type(exc).__name__}: {str(exc).splitlines()[0]})")
        return
    try:
        with tempfile.TemporaryDirectory() as d:
            bench("PostgreSQL", f"{url}?options=-csearch_path%3D{schema}", os.path.join(d, "files"), frame, args.writers, args.labels_per_writer, False,
                  args.chunk_rows, args.import_only)
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


if __name__ == "__main__":
    main()
