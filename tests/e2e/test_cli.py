"""The `tdb` CLI end to end: serve, forward, models, info, errors, graceful SIGTERM."""

from __future__ import annotations

import json

from tests.e2e.conftest import run_cli, start_server


def test_forward_prints_summary_and_json(tiny_server):
    """`tdb forward` prints tokens, next-token top-k and per-site summaries; --json is parseable."""
    r = run_cli(
        "forward",
        "When Mary and John went",
        "--capture",
        "blocks.*.mlp.hook_post",
        "--server",
        tiny_server.address,
    )
    assert r.returncode == 0, r.stderr
    assert "prompt 0:" in r.stdout and "next after position" in r.stdout
    assert "blocks.1.mlp.hook_post [batch, pos, d_mlp]" in r.stdout
    r = run_cli(
        "forward",
        "When Mary",
        "--capture",
        "blocks.0.attn.hook_pattern",
        "--positions",
        "-1",
        "--json",
        "--server",
        tiny_server.address,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    act = data["activations"]["blocks.0.attn.hook_pattern"]
    assert act["dims"] == ["batch", "head", "q_pos", "k_pos"] and act["shape"][:3] == [1, 4, 1]
    assert abs(sum(act["values"][0][0][0]) - 1.0) < 1e-5


def test_models_and_info(tiny_server):
    """`tdb models` lists the model; `tdb info` prints the schema."""
    r = run_cli("models", "--server", tiny_server.address)
    assert r.returncode == 0 and "tiny" in r.stdout and "GPT2LMHeadModel" in r.stdout
    r = run_cli("info", "--server", tiny_server.address)
    assert r.returncode == 0 and "blocks.{L}.attn.hook_pattern" in r.stdout


def test_errors_exit_nonzero_with_message(tiny_server):
    """A bad request prints the status and the server's message, exit code 1."""
    r = run_cli(
        "forward", "hi", "--capture", "blocks.9.mlp.hook_post", "--server", tiny_server.address
    )
    assert r.returncode == 1
    assert "OUT_OF_RANGE" in r.stderr and "(allowed: 0..1)" in r.stderr


def test_sigterm_stops_gracefully(tiny_gpt2_dir):
    """SIGTERM: the server logs shutdown, stops, and exits 0."""
    server = start_server("--model", f"tiny={tiny_gpt2_dir}")
    r = run_cli("forward", "hi", "--server", server.address)
    assert r.returncode == 0
    assert server.stop() == 0
    events = [e["event"] for e in server.events()]
    assert "shutting down" in events and events[-1] == "stopped"


def test_ablate_and_patch_commands(tiny_server, tmp_path):
    """`tdb ablate` prints a baseline-vs-ablated table; `tdb patch --png` prints the grid and
    writes a PNG image."""
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    r = run_cli(
        "ablate",
        clean,
        "--target",
        " Mary",
        "--distractor",
        " John",
        "--zero",
        "blocks.1.attn.hook_z[head=3]",
        "--zero",
        "blocks.0.mlp.hook_post[5,pos=-1]",
        "--each",
        "--server",
        tiny_server.address,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("baseline") for line in lines)
    assert any("zero blocks.1.attn.hook_z[head=3]" in line for line in lines)
    png = tmp_path / "patch.png"
    r = run_cli(
        "patch",
        clean,
        corrupt,
        "--site",
        "hook_resid_pre",
        "--target",
        " Mary",
        "--distractor",
        " John",
        "--png",
        str(png),
        "--server",
        tiny_server.address,
    )
    assert r.returncode == 0, r.stderr
    assert "fraction of the logit difference recovered" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attribute_command(tiny_server):
    """`tdb attribute` prints the node table sorted by direct effect."""
    r = run_cli(
        "attribute",
        "When Mary and John went to the store, John gave a drink to",
        "--target",
        " Mary",
        "--distractor",
        " John",
        "--top-k",
        "3",
        "--server",
        tiny_server.address,
    )
    assert r.returncode == 0, r.stderr
    assert "nodes ranked" in r.stdout and "direct" in r.stdout and "mlp_L" in r.stdout


def test_sae_train_command(tiny_gpt2_dir, tmp_path):
    """`tdb sae train` trains on a model's activations from a JSONL dataset, reports per-checkpoint
    metrics (L0, dead fraction, explained variance, CE loss recovered) and writes SAELens files
    that load back and attach to the model's site."""
    import json as _json

    from tdb_core.sae import load_sae
    from tests.tiny import CORPUS

    data = tmp_path / "data.jsonl"
    data.write_text("".join(_json.dumps({"text": t}) + "\n" for t in CORPUS))
    r = run_cli(
        "sae",
        "train",
        "--model",
        str(tiny_gpt2_dir),
        "--site",
        "blocks.1.hook_resid_pre",
        "--dataset",
        str(data),
        "--out",
        str(tmp_path / "sae"),
        "--steps",
        "20",
        "--batch-size",
        "64",
        "--d-sae",
        "96",
        "--k",
        "8",
        "--checkpoint-every",
        "10",
        "--quiet",
        "--json",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    rows = _json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["step"] for row in rows] == [10, 20]
    last = rows[-1]
    assert last["l0"] == 8.0 and 0 <= last["dead_fraction"] <= 1
    assert last["ce_clean"] > 0 and last["ce_loss_recovered"] is not None
    sae = load_sae(last["path"])
    assert sae.site == "blocks.1.hook_resid_pre" and sae.d_sae == 96


def test_explain_command(tiny_gpt2_dir, tmp_path):
    """`tdb explain` mines, explains and scores nodes locally (batch mode via a range) and stores
    them in the catalog file."""
    from tests.tiny import CORPUS

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(sorted(set(CORPUS))) + "\n")
    db = tmp_path / "catalog.sqlite"
    r = run_cli(
        "explain",
        "--model",
        str(tiny_gpt2_dir),
        "--node",
        "blocks.0.mlp.hook_post[0:3]",
        "--dataset",
        str(data),
        "--db",
        str(db),
        "--window-len",
        "16",
        "--quiet",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    keys = [row["node_key"] for row in rows]
    assert keys and set(keys) <= {f"blocks.0.mlp.hook_post[{i}]" for i in range(3)}
    from tdb_core.explain.store import ExplanationStore

    assert ExplanationStore(db).count() == len(keys)


NO_TORCH = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"a client command imported {name}")

sys.meta_path.insert(0, Refuse())
from {module} import main

sys.exit(main(sys.argv[1:]))
"""


def test_client_commands_import_no_torch(tiny_server):
    """Client commands run with torch and transformers unimportable, through `tdb` and through
    `python -m tdb_client.cli` (a client-only install)."""
    import subprocess
    import sys

    from tests.e2e.conftest import cli_env

    for module in ("services.cli", "tdb_client.cli"):
        for args in (
            ["models"],
            ["forward", "When Mary", "--capture", "blocks.0.mlp.hook_post", "--positions", "-1"],
            ["sae", "list"],
        ):
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    NO_TORCH.replace("{module}", module),
                    *args,
                    "--server",
                    tiny_server.address,
                ],
                env=cli_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0, (module, args, r.stderr)
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH.replace("{module}", "services.cli"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert all(c in r.stdout for c in ("serve", "forward", "explain", "toy", "sae"))


def test_gradient_weights_and_lens_commands(tiny_server, tmp_path):
    """`tdb forward --grad` prints the loss and the gradient's size per position; `tdb weights`
    lists parameters and views; `tdb lens --png` prints the grid and writes a PNG; `tdb patch
    --method attribution` labels its estimate."""
    prompt = "When Mary and John went to the store, John gave a drink to"
    server = ("--server", tiny_server.address)
    r = run_cli(
        "forward",
        prompt,
        "--grad",
        "blocks.0.hook_resid_pre",
        "--target",
        " Mary",
        "--distractor",
        " John",
        *server,
    )
    assert r.returncode == 0, r.stderr
    assert "loss: " in r.stdout and "d loss / d blocks.0.hook_resid_pre" in r.stdout
    assert "|grad| per position" in r.stdout
    r = run_cli("forward", prompt, "--grad", "blocks.0.hook_resid_pre", *server)
    assert r.returncode != 0 and "--grad needs a loss" in r.stderr
    r = run_cli(
        "weights",
        "blocks.0.attn.W_Q",
        "--heads",
        "1",
        "--neuron-logits",
        "1,5",
        "--qk",
        "0,2,5,6",
        *server,
    )
    assert r.returncode == 0, r.stderr
    assert "blocks.0.attn.W_Q [head, d_model, d_head] [1, 64, 16]  kept [1]" in r.stdout
    assert "neuron_logits[blocks.1.mlp.W_out[5]] [vocab]" in r.stdout and "  up: " in r.stdout
    assert "head_qk[blocks.0.attn[2]][5->6] = " in r.stdout
    png = tmp_path / "lens.png"
    r = run_cli("lens", prompt, "--png", str(png), *server)
    assert r.returncode == 0, r.stderr
    assert "logit lens of hook_resid_post (recomputed scale)" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli(
        "patch",
        prompt,
        "When Mary and John went to the store, Mary gave a drink to",
        "--target",
        " Mary",
        "--distractor",
        " John",
        "--method",
        "attribution",
        *server,
    )
    assert r.returncode == 0, r.stderr
    assert "attribution patching" in r.stdout
