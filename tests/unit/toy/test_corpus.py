"""The toy corpus: determinism, the train/held-out split, and the form of each task's documents."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from tdb_core.errors import InvalidArgumentError
from tdb_core.toy import corpus

REQUIRED_NAMES = ("Mary", "John", "Alice", "Bob", "James", "Sarah", "Tom", "Emma", "David", "Lisa")


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex that parses a full IOI text of ``template`` back into its slots (written here from
    the template string alone, independent of the generator)."""
    pattern = re.escape(template)
    for slot in ("A", "B", "S", "place", "obj"):
        escaped = re.escape("{" + slot + "}")
        group = r"(?:the|a|an) (?P<obj>\w+)" if slot == "obj" else rf"(?P<{slot}>\w+)"
        pattern = pattern.replace(escaped, group, 1)
    return re.compile(f"^{pattern} (?P<IO>\\w+)\\.$")


IOI_REGEXES = [_template_regex(t) for t in corpus.IOI_TEMPLATES]


def _parse_ioi(text: str) -> tuple[int, dict[str, str]] | None:
    for index, regex in enumerate(IOI_REGEXES):
        match = regex.match(text)
        if match:
            return index, match.groupdict()
    return None


@pytest.fixture(scope="module")
def train_examples() -> list[corpus.Example]:
    return corpus.generate(20_000, seed=0, split="train")


def test_vocabularies_cover_the_issue() -> None:
    """The names include the ten the issue lists and at least 40 in all; lists have no repeats."""
    assert set(REQUIRED_NAMES) <= set(corpus.NAMES)
    assert len(corpus.NAMES) >= 40
    for words in (
        corpus.NAMES,
        corpus.PLACES,
        corpus.OBJECTS,
        corpus.A_AN_NOUNS,
        corpus.INDUCTION_WORDS,
    ):
        assert len(set(words)) == len(words)
    assert not set(corpus.NAMES) & set(corpus.INDUCTION_WORDS)


def test_generation_is_deterministic_and_seeded() -> None:
    """Same arguments give the same examples; another seed or split gives other texts."""
    first = corpus.generate(300, seed=7, split="train")
    assert first == corpus.generate(300, seed=7, split="train")
    assert [e.text for e in first] != [e.text for e in corpus.generate(300, seed=8)]
    assert corpus.generate_task("ioi", 50, 3) == corpus.generate_task("ioi", 50, 3)
    heldout = corpus.generate(300, seed=7, split="heldout")
    assert [e.text for e in first] != [e.text for e in heldout]


def test_mix_controls_task_frequencies() -> None:
    """Tasks appear in proportion to the mix; a zero weight removes a task."""
    examples = corpus.generate(4000, seed=1, mix=corpus.Mix(ioi=3, induction=1, a_an=0, filler=0))
    counts = {task: sum(e.task == task for e in examples) for task in corpus.TASKS}
    assert counts["a_an"] == counts["filler"] == 0
    assert 0.70 < counts["ioi"] / len(examples) < 0.80


def test_split_sizes_are_fixed() -> None:
    """The held-out sets are the configured fractions and do not depend on any corpus seed."""
    split = corpus.split_definition()
    n_pairs = len(corpus.NAMES) * (len(corpus.NAMES) - 1) // 2
    n_combos = len(corpus.IOI_TEMPLATES) * len(corpus.PLACES) * len(corpus.OBJECTS)
    assert len(split.heldout_pairs) == round(n_pairs * corpus.HELDOUT_PAIR_FRACTION)
    assert len(split.heldout_ioi_combos) == round(n_combos * corpus.HELDOUT_COMBO_FRACTION)
    assert all(a < b for a, b in split.heldout_pairs)
    # Every name is still trained: it occurs in some pair that is not held out.
    for name in corpus.NAMES:
        assert any(
            (min(name, o), max(name, o)) not in split.heldout_pairs
            for o in corpus.NAMES
            if o != name
        )


def test_no_training_text_contains_a_heldout_pair(train_examples: list[corpus.Example]) -> None:
    """No training document of any task mentions both names of a held-out pair."""
    split = corpus.split_definition()
    names = set(corpus.NAMES)
    for example in train_examples:
        present = sorted(set(re.findall(r"\w+", example.text)) & names)
        for pair in itertools.combinations(present, 2):
            assert pair not in split.heldout_pairs, example.text


def test_training_ioi_texts_avoid_heldout_combos(train_examples: list[corpus.Example]) -> None:
    """Parsing every training IOI text back from its template finds no held-out combination,
    and the parse agrees with the example's own fields."""
    split = corpus.split_definition()
    ioi = [e for e in train_examples if isinstance(e, corpus.IOIExample)]
    assert len(ioi) > 5000
    for example in ioi:
        parsed = _parse_ioi(example.text)
        assert parsed is not None, example.text
        template, slots = parsed
        assert (template, slots["place"], slots["obj"]) not in split.heldout_ioi_combos
        assert (template, slots["place"], slots["obj"]) == (
            example.template,
            example.place,
            example.obj,
        )
        assert slots["IO"] == example.io_name and slots["S"] == example.s_name


def test_training_a_an_texts_avoid_heldout_combos(train_examples: list[corpus.Example]) -> None:
    """No training a/an document uses a held-out (template, noun) combination."""
    split = corpus.split_definition()
    for example in train_examples:
        if isinstance(example, corpus.AAnExample):
            assert (example.template, example.noun) not in split.heldout_a_an_combos


def test_heldout_examples_use_only_heldout_combinations() -> None:
    """Held-out IOI uses a held-out pair and combination; held-out a/an a held-out combination."""
    split = corpus.split_definition()
    for example in corpus.generate_task("ioi", 500, seed=0, split="heldout"):
        assert isinstance(example, corpus.IOIExample)
        pair = tuple(sorted((example.io_name, example.s_name)))
        assert pair in split.heldout_pairs
        assert (example.template, example.place, example.obj) in split.heldout_ioi_combos
    for example in corpus.generate_task("a_an", 500, seed=0, split="heldout"):
        assert isinstance(example, corpus.AAnExample)
        assert (example.template, example.noun) in split.heldout_a_an_combos


def test_ioi_documents_have_the_ioi_structure() -> None:
    """S is named twice in the prompt and IO once; the text is the prompt plus " IO."; both
    first-clause orders occur."""
    examples = [
        e
        for e in corpus.generate_task("ioi", 400, seed=2, split="train")
        if isinstance(e, corpus.IOIExample)
    ]
    for e in examples:
        words = re.findall(r"\w+", e.prompt)
        assert words.count(e.s_name) == 2 and words.count(e.io_name) == 1
        assert e.io_name != e.s_name
        assert e.text == f"{e.prompt} {e.io_name}."
        first_names = [w for w in words if w in (e.io_name, e.s_name)][:2]
        assert first_names == (
            [e.io_name, e.s_name] if e.order == "ABBA" else [e.s_name, e.io_name]
        )
    assert {e.order for e in examples} == {"ABBA", "BABA"}


def test_a_an_documents_name_the_noun_first_and_agree() -> None:
    """The noun occurs in the prompt; the continuation is the right article and the noun."""
    for e in corpus.generate_task("a_an", 400, seed=2, split="train"):
        assert isinstance(e, corpus.AAnExample)
        assert re.search(rf"\b{e.noun}\b", e.prompt)
        expected = "an" if e.noun[0] in "aeiou" else "a"
        assert e.article == expected
        assert e.text == f"{e.prompt} {expected} {e.noun}."


def test_induction_documents_repeat_distinct_words() -> None:
    """An induction text is the prefix then the same distinct words twice."""
    for e in corpus.generate_task("induction", 200, seed=2, split="train"):
        assert isinstance(e, corpus.InductionExample)
        assert corpus.INDUCTION_MIN_WORDS <= len(e.words) <= corpus.INDUCTION_MAX_WORDS
        assert len(set(e.words)) == len(e.words)
        body = e.text.removeprefix(corpus.INDUCTION_PREFIX + " ").split(" ")
        assert body == list(e.words) * 2


def test_articles_in_filler_agree() -> None:
    """Every "a"/"an" in every generated document agrees with the next word's first letter."""
    for e in corpus.generate(3000, seed=4):
        for art, word in re.findall(r"\b(a|an) (\w+)", e.text):
            assert art == ("an" if word[0].lower() in "aeiou" else "a"), e.text


def test_jsonl_round_trip(tmp_path) -> None:
    """write_jsonl writes one {"text": ...} object per line, and read_jsonl reads them back."""
    texts = corpus.iter_texts(corpus.generate(25, seed=0))
    path = tmp_path / "corpus.jsonl"
    assert corpus.write_jsonl(path, texts) == 25
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 25 and all(set(json.loads(line)) == {"text"} for line in lines)
    assert corpus.read_jsonl(path) == [e.text for e in corpus.generate(25, seed=0)]


def test_bad_arguments_raise_invalid_argument(tmp_path) -> None:
    """Unknown splits or tasks, negative sizes, bad mixes and missing directories are rejected."""
    with pytest.raises(InvalidArgumentError, match="allowed: train, heldout"):
        corpus.generate(3, split="test")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="allowed"):
        corpus.generate_task("copying", 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="n must be >= 0"):
        corpus.generate(-1)
    with pytest.raises(InvalidArgumentError, match="mix weights"):
        corpus.generate(3, mix=corpus.Mix(0, 0, 0, 0))
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        corpus.write_jsonl(tmp_path / "missing" / "x.jsonl", ["a"])
