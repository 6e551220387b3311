"""Open a selection report in a real headless browser and save a screenshot of it.

    python benchmarks/report_screenshot.py RUN/selections/NAME/report/report.html [-o OUT.png]

Uses Playwright (``pip install playwright``) when it is installed and has a browser, else a
Chromium or Chrome binary on PATH (``apt-get install chromium``) in headless mode. The page
needs no network: every image is a ``data:`` URI. When no browser is available the script says
so and exits 0, so it can run in CI on machines without one.

Exit status: 0 on success or when no browser is available, 1 when a browser ran but produced
no screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH, HEIGHT = 1100, 2600
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="report.html")
    parser.add_argument("-o", "--out", type=Path, help="PNG to write [default: next to the page]")
    args = parser.parse_args()
    page = args.page.resolve()
    if not page.is_file():
        print(f"{page}: no such file", file=sys.stderr)
        return 1
    out = (args.out or page.with_name("report_screenshot.png")).resolve()

    how = _with_playwright(page, out) or _with_binary(page, out)
    if how is None:
        print(
            "no headless browser available (neither playwright with a browser nor a "
            f"{'/'.join(BINARIES)} binary); no screenshot taken"
        )
        return 0
    if not out.is_file() or out.stat().st_size == 0:
        print(f"{how} ran but wrote no screenshot to {out}", file=sys.stderr)
        return 1
    print(f"screenshot ({how}): {out}")
    return 0


def _with_playwright(page: Path, out: Path) -> str | None:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        return None
    binary = next((shutil.which(b) for b in BINARIES if shutil.which(b)), None)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=binary)  # None: playwright's own
            tab = browser.new_page(viewport={"width": WIDTH, "height": 900})
            tab.goto(page.as_uri())
            tab.screenshot(path=str(out), full_page=True)
            browser.close()
    except Error as e:
        print(f"playwright could not run a browser: {str(e).splitlines()[0]}")
        return None
    return "playwright"


def _with_binary(page: Path, out: Path) -> str | None:
    binary = next((shutil.which(b) for b in BINARIES if shutil.which(b)), None)
    if binary is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                f"--screenshot={out}",
                page.as_uri(),
            ],
            check=False,
            capture_output=True,
            timeout=120,
        )
    return Path(binary).name


if __name__ == "__main__":
    sys.exit(main())
