"""tdb_core/checks.py: each check's status class and words, and that it imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tdb_core import checks
from tdb_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
)


@pytest.mark.parametrize(
    "call,error,words",
    [
        (
            lambda: checks.index(9, 2, "layer"),
            OutOfRangeError,
            "layer 9 is out of range (allowed: 0..1)",
        ),
        (
            lambda: checks.index(-1, 4, "head", " of site 'blocks.0.attn.hook_z'"),
            OutOfRangeError,
            "head -1 of site 'blocks.0.attn.hook_z' is out of range (allowed: 0..3)",
        ),
        (lambda: checks.index(0, 0, "patch source"), OutOfRangeError, "(allowed: none)"),
        (
            lambda: checks.position(7, 5, "logit position"),
            OutOfRangeError,
            "logit position 7 is out of range for prompt 0, which has 5 tokens (allowed: -5..4)",
        ),
        (
            lambda: checks.token_ids([1, 70], 50, "prompt 2"),
            OutOfRangeError,
            "prompt 2 has token id 70 outside the vocabulary (allowed: 0..49)",
        ),
        (lambda: checks.top_k(1001), InvalidArgumentError, "top_k must be in 0..1000, got 1001"),
        (lambda: checks.top_k(0, lo=1), InvalidArgumentError, "top_k must be in 1..1000, got 0"),
        (
            lambda: checks.non_empty([], "prompts"),
            InvalidArgumentError,
            "no prompts; give at least one",
        ),
        (
            lambda: checks.present(None, "prompt"),
            InvalidArgumentError,
            "the prompt is missing; give one",
        ),
        (
            lambda: checks.at_most(70, 64, "prompts"),
            ResourceExhaustedError,
            "70 prompts is over the server's limit of 64 per request",
        ),
        (
            lambda: checks.lookup({"gpt2": 1}, "gpt3", "model", "loaded"),
            NotFoundError,
            "model 'gpt3' is not loaded; available: gpt2",
        ),
        (
            lambda: checks.target_distractor([1], [], 50, required=False),
            InvalidArgumentError,
            "give both target and distractor tokens, or neither",
        ),
        (
            lambda: checks.target_distractor([], [], 50, required=True),
            InvalidArgumentError,
            "give at least one target and one distractor token",
        ),
        (
            lambda: checks.tensor_data([2, 3], 20, 4, "float32", "vector"),
            InvalidArgumentError,
            "vector has 20 bytes of data but shape [2, 3] of float32 needs 24",
        ),
    ],
)
def test_each_check_raises_its_class_with_its_words(call, error, words):
    """A failed check raises the class that maps to its status code, with the documented words."""
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_values_within_bounds_pass_through():
    """A good value passes and is returned (positions resolved)."""
    assert checks.index(1, 2, "layer") == 1
    assert checks.position(-1, 5) == 4
    assert checks.token_ids([1, 2], 50, "prompt") == (1, 2)
    assert checks.top_k(1000) == 1000
    assert checks.lookup({"a": 3}, "a", "model", "loaded") == 3


def test_quote_keeps_a_short_prefix():
    """Short values are quoted whole; long ones by a prefix and their length."""
    assert checks.quote("abc") == "'abc'"
    q = checks.quote("x" * 10_000)
    assert len(q) < 100 and q.endswith("(10000 characters)")


def test_checks_import_no_torch():
    """Settings and the CLI read Limits from checks without importing torch."""
    code = "import sys, tdb_core.checks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
