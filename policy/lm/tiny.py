"""Tiny causal LMs and tokenizers built offline (there is no model hub here): for tests,
benchmarks and quick local runs. A real run loads a local checkpoint folder instead."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` with <pad>, </s>, <s>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, architecture: str = "gpt2", hidden_size: int = 32,
                   n_layers: int = 2, n_heads: int = 2, max_positions: int = 64, seed: int = 0):
    """A randomly initialised tiny causal LM matching ``tokenizer``'s vocabulary."""
    import torch

    torch.manual_seed(seed)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if architecture == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=n_layers, n_head=n_heads, n_positions=max_positions, **ids)
        return GPT2LMHeadModel(config)
    if architecture == "llama":
        config = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=n_layers,
                             num_attention_heads=n_heads, num_key_value_heads=n_heads,
                             max_position_embeddings=max_positions, **ids)
        return LlamaForCausalLM(config)
    raise ValueError(f"architecture must be 'gpt2' or 'llama', got {architecture!r}")
