"""The toy tokenizer: GPT-2-style leading-space tokens, one token per task word, bos prepended."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tdb_core.errors import InvalidArgumentError
from tdb_core.toy import TOY_MODEL_DIR, corpus
from tdb_core.toy.tokenizer import EOS_TOKEN, check_single_tokens, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus.iter_texts(corpus.generate(3000, seed=0)))


def test_every_task_word_is_one_token_with_its_space(tokenizer) -> None:
    """Names, places, objects, a/an nouns, induction words, " a" and " an" are single tokens,
    and that token decodes back to the word with its leading space."""
    for word in corpus.single_token_words():
        ids = tokenizer.encode(f" {word}", add_special_tokens=False)
        assert len(ids) == 1, word
        assert tokenizer.decode(ids) == f" {word}"
    # The space is part of the token: "Mary" at the start of a text is a different token.
    assert tokenizer.encode("Mary", add_special_tokens=False) != tokenizer.encode(
        " Mary", add_special_tokens=False
    )


def test_encoding_prepends_eos_and_round_trips(tokenizer) -> None:
    """Encoding prepends <|endoftext|> (bos = eos = pad), and decoding gives the text back."""
    text = "When Mary and John went to the store, John gave a drink to Mary."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert tokenizer.convert_ids_to_tokens(ids[0]) == EOS_TOKEN
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids[1:]) == text


def test_save_and_reload_with_auto_tokenizer(tokenizer, tmp_path) -> None:
    """save_pretrained + AutoTokenizer.from_pretrained gives identical ids and special tokens."""
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [e.text for e in corpus.generate(50, seed=5)]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert reloaded.eos_token == reloaded.bos_token == reloaded.pad_token == EOS_TOKEN


def test_training_is_deterministic() -> None:
    """The same texts give the same vocabulary."""
    texts = [e.text for e in corpus.generate(500, seed=1)]
    assert train_tokenizer(texts).get_vocab() == train_tokenizer(texts).get_vocab()


def test_too_small_a_vocabulary_fails_loudly() -> None:
    """When the vocabulary cannot hold every task word as one token, building fails with an
    error that names the words and says how to fix it."""
    with pytest.raises(InvalidArgumentError, match=r"not a single token.*larger vocab_size"):
        train_tokenizer(corpus.iter_texts(corpus.generate(200, seed=0)), vocab_size=400)
    with pytest.raises(InvalidArgumentError, match="vocab_size must be >= 257"):
        train_tokenizer(["hello"], vocab_size=100)


def test_check_single_tokens_names_the_offenders(tokenizer) -> None:
    """check_single_tokens lists every word that splits, and passes on words that do not."""
    check_single_tokens(tokenizer, ["Mary", "apple"])
    with pytest.raises(InvalidArgumentError, match="Zebediah") as info:
        check_single_tokens(tokenizer, ["Mary", "Zebediah", "Quixotic"])
    assert "Quixotic" in str(info.value) and "'Mary'" not in str(info.value)


def test_shipped_tokenizer_keeps_the_guarantee() -> None:
    """The tokenizer shipped with the toy model loads offline and keeps every task word whole."""
    shipped = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    check_single_tokens(shipped, corpus.single_token_words())
    assert shipped("Mary")["input_ids"][0] == shipped.bos_token_id
