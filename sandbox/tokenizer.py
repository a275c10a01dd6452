"""The sandbox's own byte-level BPE tokenizer, trained with the ``tokenizers`` library.

Byte-level (GPT-2 style): any text round-trips, whatever its script, and words carry their leading space
(`` Paris``), so a prompt and its target tokenize the same apart as together.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# One special token serves as end of text, BOS and padding, as in GPT-2.
EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts in the same order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def as_transformers(tok: Tokenizer):
    """Wrap as a ``transformers`` fast tokenizer, saved and loaded like any GPT-2 tokenizer."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        add_prefix_space=False,
        model_max_length=1_000_000,
    )
