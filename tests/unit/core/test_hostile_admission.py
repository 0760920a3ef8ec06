"""Issue 18 in tdb_core: micro-batching runs each member under its own cancellation, attribution
takes its gradients inside admission, and every size is checked before the work it drives."""

from __future__ import annotations

import pytest
import torch

from tdb_core import cancel, errors, specs
from tdb_core.admission import Member
from tdb_core.ops import forward as forward_op
from tdb_core.ops.attribute import AttributeSpec, LogitDiffLoss, attribute
from tdb_core.runner import Limits, ModelRunner

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _expired() -> None:
    raise errors.DeadlineExceededError("the deadline passed before the work finished")


def _healthy() -> None:
    return None


def test_another_clients_deadline_does_not_fail_my_request(tiny_loaded):
    """Reported: a thread that runs another client's pending group did so under its own
    cancellation scope, so when its own deadline had passed, the other client's request failed
    with DEADLINE_EXCEEDED. Deterministic interleaving: client B's request waits in the pending
    list; client A (deadline passed) gets the lock and serves B's group first. B gets its result;
    only A fails, with its own deadline."""
    runner = ModelRunner(tiny_loaded)
    spec_b = specs.ForwardSpec(prompts=(specs.Prompt(text="The quick brown fox"),), top_k=3)
    spec_a = specs.ForwardSpec(prompts=(specs.Prompt(text=PROMPT),), top_k=4)  # another group
    with cancel.scope(_healthy):
        prep_b = forward_op._prepare(runner, spec_b)
        b = Member(prep_b, forward_op._key(spec_b), 1, prep_b.batch.max_len)
    assert b.check is _healthy
    runner.admission._pending.append(b)  # B waits; its own thread is polling for the lock
    with cancel.scope(_expired), pytest.raises(errors.DeadlineExceededError):
        forward_op.forward(runner, spec_a)  # A runs B's group, then its own
    assert b.done.is_set()
    assert b.error is None, f"B failed with A's deadline: {b.error!r}"
    assert b.result.top_logits[0][0].token_ids
    alone = forward_op.forward(runner, spec_b)
    assert torch.equal(b.result.logits_at, alone.logits_at)


def test_merged_pass_stops_only_when_every_member_stopped(tiny_loaded):
    """A merged pass keeps going while any member's client still waits for it."""
    from tdb_core.admission import group_check

    def member(check):
        return Member(None, "k", 1, 1, check=check)

    group_check([member(_expired), member(_healthy)])()  # one still waits: no raise
    with pytest.raises(errors.DeadlineExceededError):
        group_check([member(_expired), member(_expired)])()
    assert group_check([member(None), member(_expired)]) is None


def test_attribute_takes_its_gradients_inside_admission(tiny_loaded, monkeypatch):
    """Reported: gradients were taken after the model lock was released, so concurrent Attribute
    requests each held a graph (+3.6 GB for 8). Now autograd runs with the execution lock held
    and the request admitted."""
    runner = ModelRunner(tiny_loaded)
    seen = []
    real_grad = torch.autograd.grad

    def grad(*args, **kwargs):
        seen.append((runner.admission._lock.locked(), runner.queue_depth))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    ids = runner.tokens.encode(specs.Prompt(text=" Mary"), False)
    jd = runner.tokens.encode(specs.Prompt(text=" John"), False)
    attribute(
        runner,
        AttributeSpec(specs.Prompt(text=PROMPT), LogitDiffLoss(ids[:1], jd[:1]), ig_steps=2),
    )
    assert seen and all(locked and depth == 1 for locked, depth in seen)
    assert not runner.admission._lock.locked() and runner.queue_depth == 0


def test_attribute_response_is_bounded_before_work(tiny_loaded):
    """Reported: node_tokens = 2^32-1 gave a 59 MB response; Attribute responses were never
    checked against --max-response-mb. The estimate refuses before any pass."""
    runner = ModelRunner(tiny_loaded, Limits(max_response_bytes=2**20))
    ids = runner.tokens.encode(specs.Prompt(text=" Mary"), False)
    jd = runner.tokens.encode(specs.Prompt(text=" John"), False)
    with pytest.raises(errors.ResourceExhaustedError, match="response would be"):
        attribute(
            runner,
            AttributeSpec(
                specs.Prompt(text=PROMPT),
                LogitDiffLoss(ids[:1], jd[:1]),
                top_k=1000,
                node_tokens=1000,
            ),
        )
    assert runner.stats["passes"] == 0


def test_text_is_measured_before_tokenizing(tiny_loaded, monkeypatch):
    """Reported: a 10 MB prompt took 15 s and +1.6 GB before INVALID_ARGUMENT, because text was
    tokenized before it was measured. The tokenizer is never called on an oversized text."""
    runner = ModelRunner(tiny_loaded, Limits(max_tokens_per_prompt=64))
    calls = []
    real = runner.tokens.tokenizer.__class__.__call__

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(runner.tokens.tokenizer.__class__, "__call__", counting)
    huge = "hello world " * (2**20 // 12)
    with pytest.raises(errors.ResourceExhaustedError, match="bytes"):
        forward_op.forward(runner, specs.ForwardSpec(prompts=(specs.Prompt(text=huge),)))
    with pytest.raises(errors.ResourceExhaustedError, match="bytes"):
        runner.tokens.tokenize_texts(["ok", huge])
    with pytest.raises(errors.ResourceExhaustedError, match="texts"):
        runner.tokens.tokenize_texts(["a"] * (runner.limits.max_tokenize_texts + 1))
    with pytest.raises(errors.InvalidArgumentError, match="longer than any single token"):
        runner.tokens.single_token(" x" * 1000, "target")
    assert calls == []
    with pytest.raises(errors.ResourceExhaustedError, match="token ids"):
        runner.tokens.decode([1] * (runner.limits.max_request_tokens + 1))
    # multi-byte text is measured in bytes, not characters
    limit = runner.limits.max_text_bytes
    with pytest.raises(errors.ResourceExhaustedError, match=f"{limit + 2} bytes"):
        runner.tokens.encode(specs.Prompt(text="é" * (limit // 2 + 1)))
    assert forward_op.forward(runner, specs.ForwardSpec(prompts=(specs.Prompt(text=PROMPT),)))


def test_attribute_during_a_concurrent_load_sae(tiny_loaded, monkeypatch):
    """Reported INTERNAL (14-16 of 25): Attribute during a concurrent LoadSae, because the
    attached SAEs were read twice per request. They are now read once: an SAE attached after the
    request was planned does not change it."""
    from tdb_core.ops import attribute as attribution
    from tdb_core.sae import ReluArch, SaeConfig, build_sae

    def sae(seed):
        g = torch.Generator().manual_seed(seed)
        return build_sae(
            SaeConfig(d_in=64, d_sae=16, architecture=ReluArch(), site="blocks.0.hook_resid_post"),
            {
                "W_enc": torch.randn(64, 16, generator=g),
                "b_enc": torch.zeros(16),
                "W_dec": torch.randn(16, 64, generator=g),
                "b_dec": torch.zeros(64),
            },
        )

    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("first", sae(0), "memory")
    real_plan = attribution._Attribution.plan

    def plan_then_load(self, planner):
        real_plan(self, planner)
        if "second" not in runner.saes:  # another client's LoadSae lands mid-request
            runner.saes.attach("second", sae(1), "memory", "blocks.1.hook_resid_pre")

    monkeypatch.setattr(attribution._Attribution, "plan", plan_then_load)
    ids = runner.tokens.encode(specs.Prompt(text=" Mary"), False)
    jd = runner.tokens.encode(specs.Prompt(text=" John"), False)
    result = attribute(
        runner, AttributeSpec(specs.Prompt(text=PROMPT), LogitDiffLoss(ids[:1], jd[:1]), top_k=50)
    )
    saes = {r.node.sae_id for r in result.rows if r.node.sae_id}
    assert "second" not in saes and "second" in runner.saes


def test_compressed_torch_archive_is_refused_before_unpacking(tmp_path, monkeypatch):
    """Reported: a 0.39 MB compressed torch zip expanded to +381 MB before any validation. An
    archive that unpacks to far more than its size is refused; torch.load never runs."""
    import zipfile

    from tdb_core.sae import load_sae

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", bytes(64 * 2**20))  # 64 MiB of zeros, ~64 KB packed
    assert path.stat().st_size < 2**20
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1))
    with pytest.raises(errors.InvalidArgumentError, match=r"unpacks to 64\.0 MiB"):
        load_sae(path, site="blocks.0.hook_resid_pre")
    assert loads == []


def test_logit_gather_counts_against_the_budget(tiny_loaded):
    """Reported: 200,000 logit positions cost +950 MB and 20,000,000 ended in INTERNAL (a 100 GB
    allocation). Positions are bounded by the context, and the gather itself (prompts x positions
    x vocabulary) counts against the memory budget before any pass."""
    runner = ModelRunner(tiny_loaded, Limits(max_working_bytes=2**20))
    n_ctx = runner.schema.dims.n_ctx
    with pytest.raises(errors.ResourceExhaustedError, match="logit positions"):
        forward_op.forward(
            runner, specs.ForwardSpec((specs.Prompt(text=PROMPT),), logit_positions=(0,) * 200_000)
        )
    many = specs.ForwardSpec((specs.Prompt(text=PROMPT),) * 4, logit_positions=tuple([-1] * n_ctx))
    with pytest.raises(errors.ResourceExhaustedError, match="logits at 64 positions"):
        forward_op.forward(runner, many)
    assert runner.stats["passes"] == 0
    assert forward_op.forward(runner, specs.ForwardSpec((specs.Prompt(text=PROMPT),)))


def test_sae_ids_with_dots_are_catalogued_under_their_sae(tiny_loaded):
    """Reported: SAE ids with dots were stored under the wrong SAE in the catalog. A node key's
    SAE id is split from the right on the known suffix, so the catalog entry names the SAE."""
    from tdb_core.explain.workflow import parse_targets
    from tdb_core.sae import ReluArch, SaeConfig, build_sae

    runner = ModelRunner(tiny_loaded)
    g = torch.Generator().manual_seed(0)
    sae = build_sae(
        SaeConfig(d_in=64, d_sae=8, architecture=ReluArch(), site="blocks.0.hook_resid_post"),
        {
            "W_enc": torch.randn(64, 8, generator=g),
            "b_enc": torch.zeros(8),
            "W_dec": torch.randn(8, 64, generator=g),
            "b_dec": torch.zeros(64),
        },
    )
    runner.saes.attach("org.res.v2", sae, "memory")
    (target,) = parse_targets(runner, ["sae.org.res.v2.hook_sae_acts_post[3,pos=2]"])
    assert target.sae_id == "org.res.v2"
    assert target.key == "sae.org.res.v2.hook_sae_acts_post[3]"
