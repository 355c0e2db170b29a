"""The preference workbench core: a versioned store of pairwise preference labels.

>>> import workbench
>>> store = workbench.open()                 # ./workbench.db or $WORKBENCH_DB (SQLite)
>>> store.import_file("pairs.jsonl")         # HH-RLHF, TRL, LLMFAO, PandaLM, arena, ratings...
>>> v = store.snapshot("v1")                 # a named, immutable, hashed version
>>> v.to_polars()                            # one comparisons table
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .store import Store


def open(url: str | os.PathLike | None = None, *, files_dir: str | os.PathLike | None = None) -> "Store":
    """Open (or create) a store.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg://user@host/db``), a path to a SQLite file,
    or ``None`` for ``$WORKBENCH_DB`` or ``./workbench.db``. Version files (Parquet) live in
    ``files_dir`` (default: ``<db>.files`` beside a SQLite file).
    """
    from .store import Store

    return Store(url, files_dir=files_dir)


def __getattr__(name: str):  # lazy re-exports keep `import workbench` light
    if name in ("Store", "LabelReceipt", "ImportReport", "StoreError", "NotFound"):
        from . import store

        return getattr(store, name)
    if name in ("Version", "TamperedVersion"):
        from . import versions

        return getattr(versions, name)
    if name == "Run":
        from .runs import Run

        return Run
    if name in ("as_comparisons", "COLUMNS", "InvalidRows"):
        from . import frames

        return getattr(frames, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
