"""Take the README's screenshot of the web app: the debugger on the IOI prompt with L0H0 ablated.

    python scripts/web_screenshot.py [--out docs/web-app.png]

Serves the embedded toy model with the built app (`make web` first) and drives Debian's Chromium
with Playwright, as the browser tests do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import web  # noqa: E402

L0H0 = "blocks.0.attn.hook_pattern[0,pos=14]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "web-app.png"))
    args = parser.parse_args()
    web.ensure_built()
    with web.web_server() as base, web.browser() as b:
        page = b.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
        page.goto(web.debugger_url(base, abl=L0H0, k="5"))
        page.wait_for_selector("[data-testid=logit-diff-change]", timeout=60_000)
        page.wait_for_selector("[data-testid=node-table] tr.noderow", timeout=60_000)
        page.click(f"tr.noderow[data-key='{L0H0}'] td.toks")
        page.wait_for_selector("tr.detail .chip")
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        clip = {"x": 0, "y": 0, "width": 1440, "height": 1480}
        page.screenshot(path=args.out, full_page=True, clip=clip)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
