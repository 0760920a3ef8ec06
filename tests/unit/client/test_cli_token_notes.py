"""`tdb ablate`/`tdb attribute` notes on targets typed without their leading space."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tdb_client.cli import _token_notes

VOCAB = {"Mary": [7], " Mary": [3], "John": [8], " John": [4], "Zed": [9], " Zed": [1, 2]}


class FakeClient:
    """Tokenize from VOCAB; Forward returns the logits of the asked units from LOGITS."""

    def __init__(self, logits: dict[int, float]) -> None:
        self.logits = logits
        self.asked: list[tuple[int, ...]] = []

    def tokenize(self, texts, model=None, prepend_bos=None):
        return [VOCAB[t] for t in texts]

    def forward(self, prompt, capture, model=None, top_k=None):
        (cap,) = capture
        assert cap.site == "logits" and cap.positions == (-1,)
        self.asked.append(cap.units)
        row = np.array([[[self.logits[u] for u in cap.units]]], dtype=np.float32)
        return SimpleNamespace(activations={"logits": row})


def test_more_likely_space_variant_is_suggested():
    """'Mary' became token 7; ' Mary' (3) has the higher logit: the note says so and suggests it."""
    c = FakeClient({7: 1.0, 3: 9.5, 8: 0.0, 4: -1.0})
    notes = _token_notes(c, "p", -1, None, [("target", ["Mary"]), ("distractor", ["John"])])
    assert notes[0] == (
        "target 'Mary' is the token 'Mary' (id 7), with no leading space; ' Mary' (id 3) is one "
        "token too and the model finds it more likely here (logit +9.50 vs +1.00): did you mean "
        "' Mary'?"
    )
    assert notes[1] == "distractor 'John' is the token 'John' (id 8), with no leading space"


def test_no_note_for_strings_with_a_space_and_no_suggestion_when_variant_is_two_tokens():
    c = FakeClient({9: 0.0})
    assert _token_notes(c, "p", -1, None, [("target", [" Mary"])]) == []
    assert c.asked == []  # nothing to check: no call made
    (note,) = _token_notes(c, "p", -1, None, [("target", ["Zed"])])
    assert note.endswith("with no leading space")
