"""HH-RLHF (`{"chosen", "rejected"}` transcripts) as a comparisons table, for tests and benchmarks.

Read through the workbench's own importer (``format="hh-rlhf"``) into a throw-away store, so the
ids, prompts and responses are exactly what a user's store would hold. The 4 rows of the
harmless-base test split whose final assistant turn is empty are skipped (the strict import
rejects them). The chosen response is always response ``a`` (label ``"a"``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl


def hh_rlhf_data_dir() -> Path:
    """`<repo>/../shared/data/hh_rlhf_harmless_base_test`."""
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh_rlhf_harmless_base_test"


def load_hh_rlhf(path: str | Path | None = None) -> pl.DataFrame:
    """The HH-RLHF file (or the folder's ``*.jsonl*`` files) as one comparisons table."""
    import workbench

    path = Path(path) if path is not None else hh_rlhf_data_dir()
    files = sorted(path.glob("*.jsonl*")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no HH-RLHF .jsonl/.jsonl.gz files")
    with tempfile.TemporaryDirectory() as tmp:
        store = workbench.open(Path(tmp) / "hh.db")
        try:
            for file in files:
                store.import_file(file, "hh-rlhf", skip_invalid=True, rejects_path=Path(tmp) / "rejects.jsonl")
            return store.live()
        finally:
            store.close()
