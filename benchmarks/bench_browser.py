"""The feature browser's budget, measured: page size, build time, and how long Chromium takes to
make it interactive (navigation until the first latent is drawn with its matches, `HB.ready`), over
several loads. Needs Debian's chromium and chromium-driver (`make test` installs them) and selenium.

    # builds runs/study/browser.html first:
    python benchmarks/bench_browser.py runs/study
    # only loads it:
    python benchmarks/bench_browser.py runs/study --page runs/study/browser.html --loads 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path


def load_times(page: Path, loads: int) -> list[tuple[float, float]]:
    """(seconds from navigation to HB.ready, the page's own start-up ms) per load, a fresh tab
    each."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    out = []
    try:
        for _ in range(loads):
            d.get("about:blank")
            t0 = time.perf_counter()
            d.get(page.resolve().as_uri())
            while not d.execute_script("return !!(window.HB && (HB.ready || HB.errors.length))"):
                time.sleep(0.01)
            wall = time.perf_counter() - t0
            errors = d.execute_script("return HB.errors")
            if errors:
                raise SystemExit(f"the page reported errors: {errors}")
            out.append((wall, d.execute_script("return HB.readyMs")))
    finally:
        d.quit()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--page", type=Path, help="load this page instead of building one")
    ap.add_argument("--loads", type=int, default=3)
    args = ap.parse_args()
    page = args.page
    if page is None:
        import torch

        from husai.browse import write_browser

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        page = write_browser(args.run_dir)
        print(f"build: {time.perf_counter() - t0:.1f} s")
    print(f"page: {page} {page.stat().st_size / 1e6:.1f} MB")
    times = load_times(page, args.loads)
    for wall, ms in times:
        print(f"  interactive after {wall:.2f} s (in-page start-up {ms:.0f} ms)")
    print(f"median: {statistics.median(w for w, _ in times):.2f} s")


if __name__ == "__main__":
    main()
