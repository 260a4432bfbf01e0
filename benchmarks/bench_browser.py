"""The feature browser's budget, measured: page size (the page, and the cell files beside a study's
page), build time, how long Chromium takes to make it interactive (navigation until the first latent
is drawn with its matches, `HB.ready`), and how long opening another cell takes (its file read, its
list drawn, its first latent drawn), over several loads. Needs Debian's chromium and
chromium-driver (`make test` installs both) and selenium.

    # builds runs/study/browser.html (and runs/study/browser_data/) first:
    python benchmarks/bench_browser.py runs/study
    # only loads it:
    python benchmarks/bench_browser.py runs/study --page runs/study/browser.html --loads 5
    # a study's cells in one page, to compare:
    python benchmarks/bench_browser.py runs/study --one-file --out /tmp/one.html
    # a page of 12x the study's cells (each built cell repeated under another name), to time a
    # bigger grid's page without training it:
    python benchmarks/bench_browser.py runs/study --page runs/study/browser.html --replicate 12 \
        --out /tmp/big/browser.html
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path


def _driver():
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
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def _until(d, js: str) -> None:
    while not d.execute_script("return !!(" + js + ")"):
        time.sleep(0.005)


def load_times(page: Path, loads: int) -> list[tuple[float, float, float | None]]:
    """(seconds from navigation to HB.ready, the page's own start-up ms, seconds to open the last
    cell and draw its first latent, None for a one-cell page) per load, a fresh tab each."""
    d = _driver()
    out = []
    try:
        for _ in range(loads):
            d.get("about:blank")
            t0 = time.perf_counter()
            d.get(page.resolve().as_uri())
            _until(d, "window.HB && (HB.ready || HB.errors.length)")
            wall = time.perf_counter() - t0
            errors = d.execute_script("return HB.errors")
            if errors:
                raise SystemExit(f"the page reported errors: {errors}")
            switch = None
            n = d.execute_script("return (HB.data.cells || []).length")
            if n > 1:
                t1 = time.perf_counter()
                d.execute_script(
                    "const s = document.getElementById('cell-select');"
                    "s.value = HB.data.cells[HB.data.cells.length - 1].label;"
                    "s.dispatchEvent(new Event('change'));"
                )
                _until(
                    d,
                    "document.querySelector('#latent-body tr.latent') && "
                    "HB.data.cells.at(-1).saes.includes(+document.querySelector("
                    "'#latent-body tr.latent').dataset.sae)",
                )
                d.execute_script("document.querySelector('#latent-body tr.latent').click()")
                _until(d, "HB.view && HB.data.cells.at(-1).saes.includes(HB.view.sae)")
                switch = time.perf_counter() - t1
            out.append((wall, d.execute_script("return HB.readyMs"), switch))
    finally:
        d.quit()
    return out


def replicate(page: Path, times: int, out: Path) -> Path:
    """Write to `out` (and its cell files) the page's cells repeated `times` times, the copies
    labelled "copy N/..."; the measures of a study `times` as big (husai.browse.page's layout)."""
    from husai.browse.page import _write_cell_files, read_page, render
    from husai.io import atomic_write_bytes

    data, blobs = read_page(page)
    saes, big_blobs = [], {k: v for k, v in blobs.items() if k.startswith("n")}
    n = len(data["saes"])
    for r in range(times):
        for i, e in enumerate(data["saes"]):
            e = dict(e, cell=e["cell"] if r == 0 else f"copy {r}/{e['cell']}")
            e["matches"] = {str(int(j) + r * n): v for j, v in e["matches"].items()}
            for b in ("z", "e"):
                if f"{b}{i}" in blobs:
                    big_blobs[f"{b}{i + r * n}"] = blobs[f"{b}{i}"]
            saes.append(e)
    data = dict(data, saes=saes)
    data.pop("cells")
    html, files = render(data, big_blobs, out.parent.name, f"{out.stem}_data")
    from husai.browse.page import FILE_TAG

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_cell_files(out.parent / f"{out.stem}_data", files, FILE_TAG.split(":")[0])
    atomic_write_bytes(out, html.encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--page", type=Path, help="load this page instead of building one")
    ap.add_argument("--out", type=Path, help="where to build the page (default RUN_DIR)")
    ap.add_argument("--one-file", action="store_true", help="build one file, whatever the cells")
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--replicate", type=int, help="time a page of the cells repeated N times")
    args = ap.parse_args()
    page = args.page
    if page is None:
        import torch

        from husai.browse import write_browser

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        dest = None if args.replicate else args.out
        page = write_browser(args.run_dir, dest, split=False if args.one_file else None)
        print(f"build: {time.perf_counter() - t0:.1f} s")
    if args.replicate:
        page = replicate(page, args.replicate, args.out or Path("/tmp/husai_big/browser.html"))
    folder = page.parent / f"{page.stem}_data"
    files = sorted(folder.glob("cell_*.js")) if folder.is_dir() else []
    print(f"page: {page} {page.stat().st_size / 1e6:.2f} MB")
    if files:
        sizes = [f.stat().st_size / 1e6 for f in files]
        print(
            f"cell files: {len(files)} in {folder}, {sum(sizes):.1f} MB in all, "
            f"{min(sizes):.2f}-{max(sizes):.2f} MB each"
        )
    times = load_times(page, args.loads)
    for wall, ms, switch in times:
        extra = f"; another cell opened and drawn in {switch:.2f} s" if switch is not None else ""
        print(f"  interactive after {wall:.2f} s (in-page start-up {ms:.0f} ms){extra}")
    print(f"median: {statistics.median(w for w, _, _ in times):.2f} s")


if __name__ == "__main__":
    main()
