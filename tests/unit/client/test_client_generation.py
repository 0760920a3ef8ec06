"""The client's Generate edits become the right messages (no server needed)."""

from __future__ import annotations

import pytest

from tdb.v1 import inference_pb2 as ipb
from tdb_client import generation as gen
from tdb_client import interventions as iv


def test_edits_become_generate_edit_messages() -> None:
    msg = gen.edit_pb(gen.steer_latent("toy-res", 467, 48.0, positions=[-1]))
    assert msg.scope == ipb.GENERATE_SCOPE_ALL
    assert (msg.steer_latent.sae, msg.steer_latent.latent, msg.steer_latent.coeff) == (
        "toy-res",
        467,
        48.0,
    )
    assert list(msg.steer_latent.positions) == [-1]
    msg = gen.edit_pb(gen.generated(gen.clamp_latent("toy-res", 3, 2.5)))
    assert msg.scope == ipb.GENERATE_SCOPE_GENERATED and msg.WhichOneof("edit") == "clamp_latent"
    msg = gen.edit_pb(gen.prompt_only(iv.zero("blocks.0.attn.hook_z[head=1,pos=2]")))
    assert msg.scope == ipb.GENERATE_SCOPE_PROMPT
    assert msg.intervention.site == "blocks.0.attn.hook_z"
    assert list(msg.intervention.units) == [1] and list(msg.intervention.positions) == [2]
    assert msg.intervention.WhichOneof("op") == "zero"
    raw = ipb.GenerateEdit(scope=ipb.GENERATE_SCOPE_GENERATED)
    assert gen.edit_pb(raw) is raw
    with pytest.raises(ValueError, match="scope"):
        gen.edit_pb(gen.Scoped(iv.zero("x"), "later"))


def test_sets_are_named_in_order() -> None:
    sets = gen.sets_pb([[iv.zero("a")], [gen.steer_latent("s", 1, 1.0)]])
    assert [s.name for s in sets] == ["set1", "set2"]
    sets = gen.sets_pb({"zero": [iv.zero("a"), iv.scale("b", 0.5)]})
    assert [s.name for s in sets] == ["zero"] and len(sets[0].edits) == 2


def test_events_from_messages() -> None:
    names: list[str] = []
    start = gen.event_from_pb(
        ipb.GenerateResponse(start=ipb.GenerateStart(model="m", names=["baseline", "x"], seed=5)),
        names,
    )
    assert isinstance(start, gen.GenerateStart) and start.seed == 5 and names == ["baseline", "x"]
    step = gen.event_from_pb(
        ipb.GenerateResponse(
            step=ipb.GenerateStep(
                step=0,
                position=7,
                rows=[
                    ipb.GenerateRowStep(
                        active=True,
                        token=ipb.TokenChoice(token_id=3, token=" a", logprob=-0.5),
                        finished=ipb.STOP_REASON_EOS,
                    ),
                    ipb.GenerateRowStep(active=False),
                ],
            )
        ),
        names,
    )
    assert isinstance(step, gen.GenerateStep) and list(step.rows) == ["baseline"]
    assert step.rows["baseline"].token == gen.TokenChoice(3, " a", -0.5)
    assert step.rows["baseline"].finished == "eos"
