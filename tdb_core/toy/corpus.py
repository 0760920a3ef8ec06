"""Deterministic corpus for the toy model: tasks whose mechanism is known, plus filler text.

Four kinds of document, each a short English text:

* **IOI** (indirect object identification): "When Mary and John went to the store, John gave a
  drink to Mary." Two names are introduced, one of them (the subject, S) is repeated, and the text
  ends with the other (the indirect object, IO). The first clause names them in either order
  (ABBA or BABA), so position alone does not give the answer.
* **Induction**: "Random words: river cloud seven mirror river cloud seven mirror" A sequence of 4
  to 8 distinct words drawn from :data:`INDUCTION_WORDS` is repeated once; the repeat is
  predictable only by looking back at the first copy. (Longer sequences are possible, but a
  4-layer model trained for 15 CPU-minutes copies them less reliably; see the README.)
* **a/an agreement**: "Emma put the egg in the box. When I opened the box, I found an egg." The
  noun is named earlier (often with "the", so the article cannot simply be copied), and the article
  before its second mention must agree with it.
* **Filler**: plain sentences built from a small grammar, so the model stays a language model.

The train/held-out split is fixed by construction (it does not depend on the corpus seed):

* a fixed fraction of the *unordered* name pairs is held out: no training text contains both names
  of a held-out pair (so neither ordered pair is ever seen in training);
* a fixed fraction of the IOI (template, place, object) combinations is held out, and so is a
  fraction of the a/an (template, noun) combinations; training texts never use them.

Held-out IOI examples use a held-out pair *and* a held-out combination. Induction sequences are
random, so a fresh seed gives unseen sequences.

Every name, place, object, a/an noun and induction word is a plain lowercase-or-capitalised ASCII
word; the tokenizer guarantees each is one token with its leading space (see ``tokenizer.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from tdb_core.errors import InvalidArgumentError

Split = Literal["train", "heldout"]
Task = Literal["ioi", "induction", "a_an", "filler"]

SPLITS: tuple[Split, ...] = ("train", "heldout")
TASKS: tuple[Task, ...] = ("ioi", "induction", "a_an", "filler")

# The split is a property of the task definitions, not of a training run: it never changes with
# the corpus seed, so a model trained with any seed is evaluated on the same unseen combinations.
SPLIT_SEED = 20240611
HELDOUT_PAIR_FRACTION = 0.2
HELDOUT_COMBO_FRACTION = 0.2

# ----------------------------------------------------------------------------------------------
# Vocabularies. Each entry must become one token with a leading space; keep them ASCII, and keep
# a/an nouns and adjectives free of exceptions to the vowel-letter rule ("hour", "unicorn").

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "James", "Sarah", "Tom", "Emma", "David", "Lisa",
    "Michael", "Anna", "Paul", "Kate", "Peter", "Laura", "Mark", "Rachel", "Daniel", "Helen",
    "Steven", "Amy", "Robert", "Linda", "Richard", "Susan", "George", "Jessica", "Chris", "Emily",
    "Kevin", "Grace", "Brian", "Lucy", "Jack", "Sophie", "Adam", "Olivia", "Henry", "Claire",
    "Ryan", "Julia", "Sam", "Nancy",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "store", "park", "school", "office", "market", "station", "library", "hospital",
    "restaurant", "garden", "beach", "museum", "kitchen", "church", "cafe", "bank", "farm",
    "airport", "theater", "gym",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ball", "key", "letter", "gift", "apple", "orange", "bag", "ring", "pen",
    "cake", "flower", "coin", "map", "hat", "egg", "umbrella", "card", "cup",
)  # fmt: skip

AN_NOUNS: tuple[str, ...] = (
    "apple", "orange", "egg", "umbrella", "elephant", "owl", "eagle", "island", "envelope",
    "oven", "onion", "ant", "octopus", "igloo", "engine", "actor", "artist", "apron", "otter",
    "arrow", "anchor", "insect", "ocean", "idea",
)  # fmt: skip

A_NOUNS: tuple[str, ...] = (
    "banana", "pear", "cake", "dog", "cat", "book", "hat", "ball", "lemon", "melon", "cookie",
    "chair", "table", "lamp", "kite", "horse", "tiger", "key", "bicycle", "piano", "rabbit",
    "candle", "pencil", "duck",
)  # fmt: skip

INDUCTION_WORDS: tuple[str, ...] = (
    "river", "stone", "cloud", "green", "window", "silver", "music", "paper", "seven", "winter",
    "bridge", "forest", "yellow", "basket", "rocket", "planet", "candy", "mirror", "button",
    "ladder", "tunnel", "castle", "pillow", "bottle", "jacket", "carpet", "hammer", "wagon",
    "garlic", "pepper", "salt", "sugar", "honey", "butter", "cheese", "bread", "rice", "corn",
    "grape", "cherry", "peach", "plum", "mango", "tomato", "potato", "carrot", "bean", "nut",
    "mountain", "valley", "desert", "meadow", "lake", "sea", "storm", "rain", "snow", "wind",
    "thunder", "sun", "moon", "star", "sky", "fire", "ice", "water", "earth", "metal", "wood",
    "glass", "iron", "gold", "copper", "brick", "sand", "dust", "smoke", "shadow", "light",
    "dark", "red", "blue", "purple", "pink", "brown", "black", "white", "gray", "one", "two",
    "three", "four", "five", "six", "eight", "nine", "ten", "hundred", "doctor", "farmer",
    "teacher", "driver", "painter", "singer", "baker", "pilot", "sailor", "king", "queen",
    "prince", "knight", "wizard", "dragon", "monkey", "lion", "bear", "wolf", "fox", "deer",
    "mouse", "snake", "frog", "fish", "bird", "shark", "whale", "horse", "sheep", "goat", "cow",
    "pig", "chicken", "door", "wall", "roof", "floor", "clock", "phone", "radio", "camera",
    "computer", "engine", "wheel", "train", "boat", "ship", "plane", "truck", "road", "street",
    "city", "village", "country", "world",
)  # fmt: skip

FILLER_ADJECTIVES: tuple[str, ...] = (
    "old", "early", "empty", "easy", "open", "odd", "big", "small", "red", "long", "nice",
    "good", "new", "warm", "cold", "little", "sunny", "bright", "quiet", "busy",
)  # fmt: skip

FILLER_NOUNS: tuple[str, ...] = (
    "cat", "dog", "book", "car", "house", "garden", "letter", "song", "story", "picture",
    "apple", "egg", "orange", "island", "owl", "office", "umbrella", "engine",
)  # fmt: skip

FILLER_VERBS: tuple[str, ...] = (
    "read", "walk", "sing", "cook", "paint", "swim", "work", "study", "dance", "rest", "play",
    "write",
)  # fmt: skip

WEEKDAYS: tuple[str, ...] = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Templates. Placeholders: {A} and {B} are the first and second name of the opening clause, {S}
# is the repeated name (the subject), {place}, and {obj} (the object with its determiner). The IO
# name follows each prompt after a space, then a full stop.

IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {S} gave {obj} to",
    "Then, {A} and {B} had a long talk at the {place}. {S} gave {obj} to",
    "After {A} and {B} arrived at the {place}, {S} handed {obj} to",
    "While {A} and {B} were working at the {place}, {S} passed {obj} to",
    "{A} and {B} met at the {place}. Later, {S} brought {obj} to",
    "Yesterday {A} and {B} walked to the {place}, and {S} showed {obj} to",
    "At the {place}, {A} and {B} found {obj}. {S} threw it to",
    "The {place} was busy when {A} and {B} came in. {S} offered {obj} to",
    "{A} and {B} spent the day at the {place}. In the end, {S} sold {obj} to",
    "Before {A} and {B} left the {place}, {S} sent {obj} to",
)

# Whether each IOI template's object takes its indefinite article ("a drink", "an egg") or "the".
_IOI_INDEFINITE: tuple[bool, ...] = (True, False, False, True, True, False, True, True, False, True)

# a/an templates: {N} is a name, {noun} the noun, {art} its article; {place} a place. The prompt
# ends just before the article that names the noun a second time; the text continues with
# " {art} {noun}." The noun is always named earlier, so the article is fixed by the context.
A_AN_TEMPLATES: tuple[str, ...] = (
    "{N} saw the {noun} at the {place}. Later that day, {N} bought",
    "There was {art} {noun} on the table. {N} looked at it and said that it was",
    "{N} drew a picture of the {noun}. Everyone could see that it was a picture of",
    "{N} put the {noun} in the box. When I opened the box, I found",
    "My favourite thing is the {noun}. If I could have anything, I would want",
    "{N} wanted {art} {noun}, so {N} went to the {place} and got",
    "The word of the day is {noun}. Please use it in a sentence: I have",
    "{N} likes the {noun} a lot. For a birthday present, {N} asked for",
    "We read a story about the {noun}. At the end of the story, there was still",
    "The teacher asked about the {noun}. {N} answered that it is",
)

INDUCTION_PREFIX = "Random words:"
INDUCTION_MIN_WORDS = 4
INDUCTION_MAX_WORDS = 8

FILLER_TEMPLATES: tuple[str, ...] = (
    "{N} likes to {verb} at the {place}.",
    "It was {art_adj} day, so {N} stayed at the {place}.",
    "The {adj} {fnoun} was next to the {place}.",
    "{N} found {art_adj} {fnoun} near the {place}.",
    "On {day}, {N} went to the {place} to {verb}.",
    "There is {art_adj} {fnoun} in the {place}.",
    "{N} said that the {fnoun} was {adj}.",
    "Every {day}, {N} and a friend {verb} together.",
    "The {place} is {adj} in the morning.",
    "{N} wrote {art} {fnoun} about the {place}.",
    "After lunch, {N} wanted to {verb}, but it was too {adj}.",
    "This is {art_adj} {fnoun}, and that is {art_adj2} {fnoun2}.",
)

AN = "an"
A = "a"


def article(word: str) -> str:
    """The indefinite article for ``word`` by its first letter (the vocabularies avoid exceptions)."""
    return AN if word[0].lower() in "aeiou" else A


A_AN_NOUNS: tuple[str, ...] = AN_NOUNS + A_NOUNS


def single_token_words() -> tuple[str, ...]:
    """Every word a task needs to be exactly one token with its leading space (sorted, unique)."""
    words = set(NAMES) | set(PLACES) | set(OBJECTS) | set(A_AN_NOUNS) | set(INDUCTION_WORDS)
    words |= {A, AN}
    return tuple(sorted(words))


# ----------------------------------------------------------------------------------------------
# Examples: one frozen record per task (a tagged union on ``task``). ``text`` is the full document;
# ``prompt`` (where a task has one) is the part before the evaluated continuation.


@dataclass(frozen=True)
class IOIExample:
    """An IOI document: the text ends with " {io_name}."; the prompt stops before the name."""

    text: str
    prompt: str
    io_name: str
    s_name: str
    template: int
    place: str
    obj: str
    order: Literal["ABBA", "BABA"]
    task: Literal["ioi"] = "ioi"


@dataclass(frozen=True)
class InductionExample:
    """A random word sequence repeated once: ``text`` is the prefix, then ``words`` twice."""

    text: str
    words: tuple[str, ...]
    task: Literal["induction"] = "induction"


@dataclass(frozen=True)
class AAnExample:
    """An a/an document: the prompt stops before the article that re-mentions ``noun``."""

    text: str
    prompt: str
    noun: str
    article: str
    template: int
    task: Literal["a_an"] = "a_an"


@dataclass(frozen=True)
class FillerExample:
    """A plain sentence from the filler grammar."""

    text: str
    task: Literal["filler"] = "filler"


Example = IOIExample | InductionExample | AAnExample | FillerExample


@dataclass(frozen=True)
class Mix:
    """Relative weights of the tasks in a generated corpus (normalised when sampling)."""

    ioi: float = 0.45
    induction: float = 0.35
    a_an: float = 0.12
    filler: float = 0.08


DEFAULT_MIX = Mix()


@dataclass(frozen=True)
class SplitDefinition:
    """Which combinations are held out. Pairs are stored as (name, name) in sorted order."""

    heldout_pairs: frozenset[tuple[str, str]]
    heldout_ioi_combos: frozenset[tuple[int, str, str]]
    heldout_a_an_combos: frozenset[tuple[int, str]]


# ----------------------------------------------------------------------------------------------
# The split.


def _sorted_pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


_Combo = TypeVar("_Combo", bound=tuple[object, ...])


def _take_fraction(
    items: Sequence[_Combo], fraction: float, rng: random.Random
) -> frozenset[_Combo]:
    shuffled = list(items)
    rng.shuffle(shuffled)
    return frozenset(shuffled[: round(len(shuffled) * fraction)])


@functools.cache
def split_definition() -> SplitDefinition:
    """The fixed train/held-out split (same for every corpus seed and every training run)."""
    rng = random.Random(SPLIT_SEED)
    pairs = [_sorted_pair(a, b) for a, b in itertools.combinations(NAMES, 2)]
    ioi_combos = list(itertools.product(range(len(IOI_TEMPLATES)), PLACES, OBJECTS))
    a_an_combos = list(itertools.product(range(len(A_AN_TEMPLATES)), A_AN_NOUNS))
    return SplitDefinition(
        heldout_pairs=_take_fraction(pairs, HELDOUT_PAIR_FRACTION, rng),
        heldout_ioi_combos=_take_fraction(ioi_combos, HELDOUT_COMBO_FRACTION, rng),
        heldout_a_an_combos=_take_fraction(a_an_combos, HELDOUT_COMBO_FRACTION, rng),
    )


@functools.cache
def _heldout_lists() -> tuple[
    list[tuple[str, str]], list[tuple[int, str, str]], list[tuple[int, str]]
]:
    """The held-out sets as sorted lists, so sampling from them is deterministic."""
    split = split_definition()
    return (
        sorted(split.heldout_pairs),
        sorted(split.heldout_ioi_combos),
        sorted(split.heldout_a_an_combos),
    )


# ----------------------------------------------------------------------------------------------
# Samplers. Each takes a ``random.Random`` and the split; the same RNG state gives the same example.


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidArgumentError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def sample_ioi(rng: random.Random, split: Split) -> IOIExample:
    """One IOI document. Train: no held-out pair or combination. Held-out: both held out."""
    _check_split(split)
    definition = split_definition()
    if split == "heldout":
        pairs, combos, _ = _heldout_lists()
        pair = rng.choice(pairs)
        template, place, obj = rng.choice(combos)
    else:
        while True:
            a, b = rng.sample(NAMES, 2)
            pair = _sorted_pair(a, b)
            if pair not in definition.heldout_pairs:
                break
        while True:
            template = rng.randrange(len(IOI_TEMPLATES))
            place = rng.choice(PLACES)
            obj = rng.choice(OBJECTS)
            if (template, place, obj) not in definition.heldout_ioi_combos:
                break
    io_name, s_name = pair if rng.random() < 0.5 else (pair[1], pair[0])
    order: Literal["ABBA", "BABA"] = "ABBA" if rng.random() < 0.5 else "BABA"
    first, second = (io_name, s_name) if order == "ABBA" else (s_name, io_name)
    determiner = article(obj) if _IOI_INDEFINITE[template] else "the"
    prompt = IOI_TEMPLATES[template].format(
        A=first, B=second, S=s_name, place=place, obj=f"{determiner} {obj}"
    )
    return IOIExample(
        text=f"{prompt} {io_name}.",
        prompt=prompt,
        io_name=io_name,
        s_name=s_name,
        template=template,
        place=place,
        obj=obj,
        order=order,
    )


def sample_induction(rng: random.Random, split: Split) -> InductionExample:
    """A sequence of distinct random words, repeated once.

    Words are distinct within a sequence in both splits, so a word seen before occurs again only
    in the repeat and "a token recurs" is a reliable signal to copy. (Drawing with replacement
    makes accidental recurrences in the first copy common with a vocabulary of this size, and a
    model trained on that learns to trust the copy only late in the repeat.)
    """
    _check_split(split)
    n_words = rng.randint(INDUCTION_MIN_WORDS, INDUCTION_MAX_WORDS)
    words = tuple(rng.sample(INDUCTION_WORDS, n_words))
    body = " ".join(words)
    return InductionExample(text=f"{INDUCTION_PREFIX} {body} {body}", words=words)


def sample_a_an(rng: random.Random, split: Split) -> AAnExample:
    """One a/an document; held-out uses only held-out (template, noun) combinations."""
    _check_split(split)
    definition = split_definition()
    if split == "heldout":
        _, _, combos = _heldout_lists()
        template, noun = rng.choice(combos)
    else:
        while True:
            template = rng.randrange(len(A_AN_TEMPLATES))
            noun = rng.choice(A_AN_NOUNS)
            if (template, noun) not in definition.heldout_a_an_combos:
                break
    art = article(noun)
    prompt = A_AN_TEMPLATES[template].format(
        N=rng.choice(NAMES), noun=noun, art=art, place=rng.choice(PLACES)
    )
    return AAnExample(
        text=f"{prompt} {art} {noun}.", prompt=prompt, noun=noun, article=art, template=template
    )


def sample_filler(rng: random.Random) -> FillerExample:
    """One sentence from the filler grammar (at most one name, so no name pair ever co-occurs)."""
    template = rng.choice(FILLER_TEMPLATES)
    adj, adj2 = rng.choice(FILLER_ADJECTIVES), rng.choice(FILLER_ADJECTIVES)
    fnoun, fnoun2 = rng.choice(FILLER_NOUNS), rng.choice(FILLER_NOUNS)
    text = template.format(
        N=rng.choice(NAMES),
        verb=rng.choice(FILLER_VERBS),
        place=rng.choice(PLACES),
        adj=adj,
        fnoun=fnoun,
        fnoun2=fnoun2,
        art=article(fnoun),
        art_adj=f"{article(adj)} {adj}",
        art_adj2=f"{article(adj2)} {adj2}",
        day=rng.choice(WEEKDAYS),
    )
    return FillerExample(text=text)


def sample_task(task: Task, rng: random.Random, split: Split) -> Example:
    """One example of ``task`` from ``split``."""
    if task == "ioi":
        return sample_ioi(rng, split)
    if task == "induction":
        return sample_induction(rng, split)
    if task == "a_an":
        return sample_a_an(rng, split)
    if task == "filler":
        _check_split(split)
        return sample_filler(rng)
    raise InvalidArgumentError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


def _rng(seed: int, split: Split, stream: str) -> random.Random:
    # String seeds are hashed with SHA-512 by ``random``: stable across runs and platforms.
    return random.Random(f"tdb-toy:{stream}:{split}:{seed}")


def generate(
    n: int, seed: int = 0, split: Split = "train", mix: Mix = DEFAULT_MIX
) -> list[Example]:
    """``n`` examples from ``split``, tasks drawn by ``mix``; a pure function of its arguments."""
    _check_split(split)
    if n < 0:
        raise InvalidArgumentError(f"n must be >= 0, got {n}")
    return list(itertools.islice(stream(seed, split, mix), n))


def stream(seed: int = 0, split: Split = "train", mix: Mix = DEFAULT_MIX) -> Iterator[Example]:
    """An endless deterministic stream of examples; :func:`generate` takes its first ``n``."""
    _check_split(split)
    weights = (mix.ioi, mix.induction, mix.a_an, mix.filler)
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InvalidArgumentError(f"mix weights must be >= 0 with a positive sum, got {mix}")
    return _endless(_rng(seed, split, "mix"), weights, split)


def _endless(rng: random.Random, weights: tuple[float, ...], split: Split) -> Iterator[Example]:
    while True:
        (task,) = rng.choices(TASKS, weights=weights)
        yield sample_task(task, rng, split)


def generate_task(task: Task, n: int, seed: int = 0, split: Split = "heldout") -> list[Example]:
    """``n`` examples of one task (used by the evaluation)."""
    _check_split(split)
    if n < 0:
        raise InvalidArgumentError(f"n must be >= 0, got {n}")
    rng = _rng(seed, split, task)
    return [sample_task(task, rng, split) for _ in range(n)]


def iter_texts(examples: Iterable[Example]) -> Iterator[str]:
    """The document texts of ``examples``."""
    return (example.text for example in examples)


def write_jsonl(path: str | Path, texts: Iterable[str]) -> int:
    """Write one ``{"text": ...}`` JSON object per line; returns the number of lines written."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InvalidArgumentError(
            f"directory {str(path.parent)!r} does not exist; create it first"
        )
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[str]:
    """Read the texts of a file written by :func:`write_jsonl`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]
