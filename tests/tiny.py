"""Tiny random-init models and a locally trained tokenizer for tests (nothing is downloaded).

LayerNorm gains/biases and every linear bias are randomized, because GPT-2's own init leaves them at
1/0, which hides mistakes (folding or forgetting them would change nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "When Alice and Bob went to the park, Bob gave a ball to Alice.",
    "The quick brown fox jumps over the lazy dog.",
    "I ate an apple and a banana at the station.",
    "A cat sat on the mat while the dog slept in the sun.",
    "Numbers like 1, 2, 3 and 42 appear in text too.",
    "Transformers read tokens and write logits, one position at a time.",
] * 20


def train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE (GPT-2 style, leading-space tokens) trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def randomize_norms_and_biases(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every norm weight/bias and linear bias a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def tiny_gpt2(
    vocab_size: int,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 64,
):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=vocab_size,
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    model = GPT2LMHeadModel(cfg).eval()
    randomize_norms_and_biases(model, seed)
    return model


def save_tiny_gpt2(path: Path, seed: int = 0) -> Path:
    """Write a tiny GPT-2 and its tokenizer as a HF directory (safetensors)."""
    tok = train_tokenizer()
    model = tiny_gpt2(len(tok), seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
