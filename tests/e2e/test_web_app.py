"""The web app in a real browser (Debian's Chromium, driven by Playwright) against a real server
serving the embedded toy model over gRPC-Web, with the built app at /.

Each test writes a screenshot to $TDB_TEST_ARTIFACTS (default build/test-artifacts/web). Where
Chromium, Playwright or the built app is missing these tests skip, except under CI (CI=true),
where they fail: `.ci/run` installs Chromium and builds the app.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e import web

pytestmark = pytest.mark.slow

ARTIFACTS = Path(
    os.environ.get("TDB_TEST_ARTIFACTS", web.ROOT / "build" / "test-artifacts" / "web")
)
L0H0 = "blocks.0.attn.hook_pattern[0,pos=14]"


@pytest.fixture(scope="module")
def base():
    why = web.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {why}")
        pytest.skip(why)
    web.ensure_built()
    with web.web_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser(base):
    with web.browser() as b:
        yield b


@pytest.fixture()
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.evaluate("window.scrollTo(0, 0)")
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def table_rows(page) -> list[dict]:
    """The node table as drawn: key, kind and every numeric cell by column id."""
    return page.eval_on_selector_all(
        "[data-testid=node-table] tr.noderow",
        """rows => rows.map(r => ({
            key: r.dataset.key, kind: r.dataset.kind,
            cells: Object.fromEntries([...r.querySelectorAll('td[data-col]')].map(
                td => [td.dataset.col, td.dataset.value === undefined ? null : Number(td.dataset.value)]))
        }))""",
    )


def wait_table(page, run_id: int | None = None) -> None:
    sel = "[data-testid=node-table] tr.noderow"
    if run_id is not None:
        sel = f"[data-testid=node-table][data-run-id='{run_id}'] tr.noderow"
    page.wait_for_selector(sel, timeout=60_000)


def loss_values(page) -> list[float]:
    return json.loads(page.get_attribute("[data-testid=logit-diff]", "data-values"))


def test_ioi_link_runs_the_query_logits_and_node_table(page, base):
    """Opening a link with prompt/target/distractor runs it: " Mary" tops the logits card (the
    model's top next token, above every unpinned row) and the node table is filled, sorted by
    direct effect, descending."""
    page.goto(web.debugger_url(base))
    wait_table(page)
    page.wait_for_selector("[data-testid=logits-table] tbody tr")
    first = page.locator("[data-testid=logits-table] tbody tr").first
    assert first.get_attribute("data-token") == " Mary"
    logits = page.eval_on_selector_all(
        "[data-testid=logits-table] tbody tr",
        "rs => rs.map(r => [r.dataset.token, Number(r.children[1].textContent.replace('−','-'))])",
    )
    mary = dict(logits)[" Mary"]
    assert all(mary > v for t, v in logits if t != " Mary"), logits[:5]
    assert loss_values(page)[0] > 10  # logit difference Mary - John
    rows = table_rows(page)
    assert len(rows) >= 20
    direct = [r["cells"]["direct_effect/0"] for r in rows]
    assert direct == sorted(direct, reverse=True)
    assert (
        page.locator("[data-testid=node-table] th[aria-sort=descending]")
        .inner_text()
        .startswith("Direct effect")
    )


def test_sorting_puts_a_layer0_head_on_top(page, base):
    """Sorting by a column re-sorts the drawn table: by direct effect (the default) the top row is
    the largest direct effect; by estimated total effect an attention head of layer 0 leads (the
    IOI heads of the toy model act through later layers, so their direct effect is small)."""
    page.goto(web.debugger_url(base))
    wait_table(page)
    page.click("button[data-sort='total_effect/0']")
    rows = table_rows(page)
    assert rows[0]["kind"] == "attn_head" and rows[0]["key"].startswith("blocks.0.attn.")
    total = [r["cells"]["total_effect/0"] for r in rows]
    assert total == sorted(total, reverse=True)
    assert "sort=total_effect" in page.url  # sort state is in the URL
    page.click("button[data-sort='direct_effect/0']")
    rows = table_rows(page)
    assert rows[0]["cells"]["direct_effect/0"] == max(r["cells"]["direct_effect/0"] for r in rows)
    page.click("button[data-sort='direct_effect/0']")  # again: ascending
    rows = table_rows(page)
    assert rows[0]["cells"]["direct_effect/0"] == min(r["cells"]["direct_effect/0"] for r in rows)


def test_ablate_l0h0_drops_the_logit_difference(page, base):
    """A row's Ablate action zeroes that node (by its canonical key, kept in the URL): ablating
    L0H0 at the last token makes the logit difference fall by more than 10, and the table gains
    Baseline / Ablated / Diff columns."""
    page.goto(web.debugger_url(base))
    wait_table(page)
    before = loss_values(page)[0]
    page.click(f"tr.noderow[data-key='{L0H0}'] td.toks")  # expand the row
    page.click("tr.detail button[data-action=ablate]")
    page.wait_for_selector("[data-testid=logit-diff-change]", timeout=60_000)
    wait_table(page)
    page.wait_for_selector("[data-testid=logits-table] th:has-text('Diff')")
    base_ld, ablated_ld = loss_values(page)
    assert base_ld == pytest.approx(before)
    assert ablated_ld - base_ld < -10
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["abl"] == [L0H0]
    assert page.locator(f"[data-testid=ablations] tr[data-abl='{L0H0}']").count() == 1
    assert page.locator("button[data-sort='direct_effect/diff']").count() == 1


def test_link_with_ablation_reproduces_the_page(page, base):
    """A URL carrying an ablation reproduces the ablated run without any clicking."""
    page.goto(web.debugger_url(base, abl=L0H0))
    page.wait_for_selector("[data-testid=logit-diff-change]", timeout=60_000)
    base_ld, ablated_ld = loss_values(page)
    assert ablated_ld - base_ld < -10


def test_neuron_node_page_shows_top_records(page, base):
    """A node name links to its node page (by canonical key): live activations on the prompt,
    stored explanations, output tokens, and the top and random dataset records once mined."""
    page.goto(web.debugger_url(base))
    wait_table(page)
    link = page.locator("tr.noderow[data-kind=mlp_neuron] td.name a").first
    key = link.get_attribute("title")
    link.click()
    page.wait_for_selector("[data-testid=node-page]")
    assert re.fullmatch(r"blocks\.\d+\.mlp\.hook_post\[\d+,pos=\d+\]", key)
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["node"] == [key]
    page.wait_for_selector("[data-testid=live-activations] .tokcell", timeout=60_000)
    page.wait_for_selector("[data-testid=records-top] .tokmap", timeout=120_000)
    assert page.locator("[data-testid=records-top] .tokmap").count() >= 5
    assert page.locator("[data-testid=records-random] .tokmap").count() >= 1
    page.wait_for_selector("[data-testid=explanations] li")
    page.wait_for_selector("[data-testid=node-tokens] .chip")


def test_bad_site_shows_the_servers_message(page, base):
    """An ablation on a site the model lacks gets the server's own message in the page."""
    page.goto(web.debugger_url(base))
    wait_table(page)
    page.fill("[data-testid=ablation-selector]", "blocks.0.mlp.hook_nope[1]")
    page.click("[data-testid=ablation-add]")
    err = page.wait_for_selector("[data-testid=server-error]", timeout=60_000)
    text = err.inner_text()
    assert "NOT_FOUND" in text and "hook_nope" in text, text


def test_two_token_target_shows_the_servers_message(page, base):
    """A target that is not one token is refused by the server, and its message is shown."""
    page.goto(web.debugger_url(base).replace("target=+Mary", "target=+Mary+Ann"))
    err = page.wait_for_selector("[data-testid=server-error]", timeout=60_000)
    assert "INVALID_ARGUMENT" in err.inner_text()


def test_records_can_be_cancelled(page, base):
    """Mining shows progress with a Cancel button; cancelling ends the call and says so."""
    page.goto(
        f"{base}/?view=node&node=blocks.1.mlp.hook_post[5]&prompt={urllib.parse.quote(web.IOI)}"
    )
    busy = page.wait_for_selector("[data-testid=busy]:has-text('Mining records')")
    busy.query_selector("button").click()
    page.wait_for_selector("button:has-text('Mine again')")


def test_explanations_show_more_reads_the_next_page(page, base, tmp_path):
    """A unit with more stored explanations than one ListExplanations page (50) shows the first
    page and "Show more", which appends the page starting at next_offset and goes away after the
    last one."""
    from tdb_core.explain.store import ExplanationStore
    from tdb_core.toy import TOY_MODEL_NAME

    unit = "blocks.1.mlp.hook_post[5]"
    db = tmp_path / "explanations.sqlite"
    store = ExplanationStore(db)
    for i in range(60):
        store.put(
            model=TOY_MODEL_NAME,
            node_key=unit,
            method="baseline",
            explainer=f"seeded-{i:02d}",
            explanation=f"seeded explanation {i:02d}",
            score=i / 100,
        )
    with web.web_server(explanations_db=str(db)) as url:
        page.goto(f"{url}/?view=node&node={unit}&prompt={urllib.parse.quote(web.IOI)}")
        more = page.wait_for_selector("[data-testid=explanations-more]", timeout=60_000)
        items = page.locator("[data-testid=explanations] li")
        assert items.count() == 50
        more.click()
        page.wait_for_selector("[data-testid=explanations-more]", state="detached")
        texts = items.all_inner_texts()
        seeded = sorted(t for t in texts if "seeded explanation" in t)
        assert len(seeded) == 60 and len(texts) - 60 in (0, 1)  # and the shipped one, if any
        assert [t.split("seeded explanation ")[1][:2] for t in seeded] == [
            f"{i:02d}" for i in range(60)
        ]
        # the page's other cards finish loading while this server still runs, so the
        # screenshot (taken after it stops) shows the page as a user sees it
        page.wait_for_selector("[data-testid=records-top] .tokmap", timeout=120_000)


def test_attention_and_patching_views(page, base):
    """The attention view draws a head's pattern; the patching view a layer x position heatmap
    with its colour scale."""
    page.goto(f"{base}/?view=attention&layer=0&head=0&prompt={urllib.parse.quote(web.IOI)}")
    page.wait_for_selector("[data-testid=attention-pattern] rect.mcell")
    n = page.locator("[data-testid=attention-pattern] rect.mcell").count()
    assert n == 15 * 16 // 2  # causal: query x key <= query, 15 tokens with BOS
    q = urllib.parse.urlencode(
        {
            "view": "patch",
            "clean": web.IOI,
            "corrupted": web.IOI.replace("store, John", "store, Mary"),
        }
    )
    page.goto(f"{base}/?{q}")
    page.wait_for_selector("[data-testid=patch-heatmap] rect.mcell", timeout=60_000)
    assert page.locator("[data-testid=patch-heatmap] .legend").count() == 1


def test_webapp_benchmark_runs(base):
    """`python -m benchmarks webapp` times Run -> node table drawn in the browser and prints one
    JSON object last (the figure is not asserted)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "webapp", "--runs", "2"],
        cwd=web.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["benchmark"] == "webapp" and res["runs"] == 2
    assert res["run_to_table_p50_ms"] > 0 and res["native_grpc_attribute_p50_ms"] > 0
