"""What a new user sees from the client commands: attention heatmaps, one-line errors, hints."""

from __future__ import annotations

import json

from tests.e2e.conftest import run_cli

PROMPT = "When Mary and John went to the store"


def test_forward_draws_attention_heatmaps_and_png(tiny_server, tmp_path):
    """`tdb forward --capture ...hook_pattern` prints a text heatmap per head (one row per
    query position) and `--png` writes an image."""
    png = tmp_path / "att.png"
    r = run_cli(
        "forward", PROMPT, "--capture", "blocks.0.attn.hook_pattern", "--positions", "-1",
        "--png", str(png), "--server", tiny_server.address,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "rows are query positions, columns key positions" in r.stdout
    assert r.stdout.count("  head ") == 4  # the tiny model has 4 heads
    assert "  -> " in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_malformed_selector_is_one_line_not_a_traceback(tiny_server):
    """A selector that does not parse: exit 2, one line with the grammar, no traceback."""
    r = run_cli(
        "ablate", PROMPT, "--target", " Mary", "--distractor", " John",
        "--zero", "blocks.0.attn.hook_z[head=0", "--server", tiny_server.address,
    )  # fmt: skip
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot parse 'blocks.0.attn.hook_z[")


def test_capture_with_brackets_is_told_about_positions_and_units(tiny_server):
    """A capture written as a selector gets NOT_FOUND saying how captures select."""
    r = run_cli(
        "forward", PROMPT, "--capture", "blocks.0.attn.hook_z[head=0]",
        "--server", tiny_server.address,
    )  # fmt: skip
    assert r.returncode == 1
    assert "NOT_FOUND" in r.stderr and "`units` and `positions`" in r.stderr
    assert "Traceback" not in r.stderr


def test_misspelled_site_gets_did_you_mean(tiny_server):
    r = run_cli(
        "forward", PROMPT, "--capture", "blocks.0.mlp.hook_pots", "--server", tiny_server.address
    )
    assert r.returncode == 1
    assert "did you mean 'blocks.0.mlp.hook_post'?" in r.stderr


def test_attribute_json_rows_carry_explanation_field(tiny_server):
    """`tdb attribute --json`: rows are sorted by direct effect, descending, and each carries an
    "explanation" (null here: the tiny model has none stored)."""
    r = run_cli(
        "attribute", PROMPT, "--target", " Mary", "--distractor", " John", "--json",
        "--server", tiny_server.address,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert rows and all("explanation" in row for row in rows)
    direct = [row["values"][0]["direct_effect"] for row in rows]
    assert direct == sorted(direct, reverse=True)
