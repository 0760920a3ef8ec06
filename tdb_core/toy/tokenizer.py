"""A GPT-2-style byte-level BPE tokenizer trained on the toy corpus.

Pre-tokenization is GPT-2's (``ByteLevel`` without an added prefix space), so a word after a space
is its own token with the space attached: " Mary" is one token, "When" at the start of a text is
another. ``<|endoftext|>`` is the only special token and serves as bos, eos and pad. The tokenizer
prepends it to every encoded text (a ``TemplateProcessing`` post-processor stored in
``tokenizer.json``), because the model is trained on documents that each start after one; any
client that tokenizes through ``AutoTokenizer`` therefore gets the inputs the model expects.

:func:`check_single_tokens` guarantees that every word a task is evaluated on (names, places,
objects, a/an nouns, induction words, " a", " an") is exactly one token with its leading space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tdb_core.errors import InvalidArgumentError
from tdb_core.toy import corpus
from tdb_core.toy.config import DEFAULT_VOCAB_SIZE

EOS_TOKEN = "<|endoftext|>"
# A vocabulary smaller than the byte alphabet plus the special token cannot be trained.
_MIN_VOCAB_SIZE = 256 + 1


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and check the single-token guarantee.

    ``vocab_size`` is an upper bound: merges stop when no pair occurs at least twice, which on the
    toy corpus happens well below 2048. Training is deterministic for the same texts.
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise InvalidArgumentError(
            f"vocab_size must be >= {_MIN_VOCAB_SIZE} (256 bytes plus {EOS_TOKEN}), got {vocab_size}"
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The task words are listed once more so that every one of them is in the training data even
    # when a caller passes a tiny corpus; frequencies in a real corpus dwarf this.
    lexicon = ["".join(f" {word}" for word in corpus.single_token_words())] * 2
    bpe.train_from_iterator([*lexicon, *texts], trainer=trainer)
    eos_id = bpe.token_to_id(EOS_TOKEN)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A",
        pair=f"{EOS_TOKEN} $A {EOS_TOKEN} $B",
        special_tokens=[(EOS_TOKEN, eos_id)],
    )
    # transformers leaves the fast tokenizer's constructor unannotated
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        model_max_length=model_max_length,
    )
    check_single_tokens(tokenizer, corpus.single_token_words())
    return tokenizer


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The id of ``" " + word``, which must be exactly one token."""
    ids = tokenizer.encode(f" {word}", add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise InvalidArgumentError(
            f"{' ' + word!r} is {len(ids)} tokens {pieces} in this tokenizer, but the toy tasks need "
            "it to be exactly one token; train the tokenizer on more toy-corpus text or with a "
            "larger vocab_size"
        )
    return int(ids[0])


def check_single_tokens(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> None:
    """Raise :class:`InvalidArgumentError` naming every word that is not one token with a space."""
    bad: list[str] = []
    for word in words:
        ids = tokenizer.encode(f" {word}", add_special_tokens=False)
        if len(ids) != 1:
            bad.append(f"{' ' + word!r} -> {tokenizer.convert_ids_to_tokens(ids)}")
    if bad:
        raise InvalidArgumentError(
            f"{len(bad)} task word(s) are not a single token with their leading space: "
            f"{'; '.join(bad)}. Every name, place, object, a/an noun and induction word must be one "
            "token; train the tokenizer on more toy-corpus text or with a larger vocab_size"
        )
