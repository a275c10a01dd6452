"""Tiny random causal LMs of every family in the architecture table, built from a config (no download)."""

from __future__ import annotations

import torch

FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]
VOCAB = 128


def tiny_model(family: str, seed: int = 0, d_model: int = 32, d_mlp: int = 64, layers: int = 3, vocab: int = VOCAB,
               init_range: float = 0.02):
    import transformers as tf

    common = dict(vocab_size=vocab, initializer_range=init_range, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_layer=layers, n_embd=d_model, n_head=2, n_inner=d_mlp, n_positions=64, **common)
    elif family == "gptj":
        cfg = tf.GPTJConfig(n_layer=layers, n_embd=d_model, n_head=2, n_inner=d_mlp, rotary_dim=8, n_positions=64,
                            **common)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=d_model, num_attention_heads=2,
                               intermediate_size=d_mlp, max_position_embeddings=64, **common)
    else:
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
        cfg = cls(num_hidden_layers=layers, hidden_size=d_model, num_attention_heads=2, num_key_value_heads=2,
                  intermediate_size=d_mlp, max_position_embeddings=64, **common)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(cfg)
    return model.eval()


TEXTS = [
    "The capital of France is Paris.", "The capital of Poland is Warsaw.", "The head of state of Poland is Andrzej Duda.",
    "The official language of Japan is Japanese.", "Rome is the capital of Italy.", "Berlin is in Germany.",
]


def tiny_tokenizer(vocab: int = 300):
    """A byte-level BPE (GPT-2 style, no BOS added) trained on a few sentences; ids < ``vocab``."""
    from sandbox.tokenizer import as_transformers, train_tokenizer

    return as_transformers(train_tokenizer(TEXTS * 3, vocab))
