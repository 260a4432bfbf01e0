"""The feature browser in a real browser: Debian's headless Chromium driven by Selenium through the
system chromedriver (`make test` installs both; nothing is downloaded at run time). The page the
study wrote is opened, a latent selected, and every panel checked against numbers computed here from
the SAE on disk; filters, sorting, search, the matches and the model page are exercised, the console
must stay clean, and a screenshot is kept under test-artifacts/ for the developer to look at."""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_panels import check_new_panels

from husai.browse.data import LEVELS

ARTIFACTS = Path(
    os.environ.get("HUSAI_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "Debian's chromium and chromium-driver are needed (make test installs them)"
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1100",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    yield d
    d.quit()


def _open(d, page: Path) -> float:
    t0 = time.time()
    d.get(page.resolve().as_uri())
    while not d.execute_script("return !!(window.HB && (HB.ready || HB.errors.length))"):
        assert time.time() - t0 < 60, "the page never became ready"
        time.sleep(0.05)
    assert d.execute_script("return HB.errors") == []
    return time.time() - t0


def _wait(d, js: str, timeout: float = 20):
    t0 = time.time()
    while not d.execute_script("return " + js):
        assert time.time() - t0 < timeout, js
        time.sleep(0.05)


def _console_errors(d) -> list:
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def _pick(d, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", select_id)).select_by_value(value)


def _rows(d) -> list[dict]:
    return d.execute_script(
        "return Array.from(document.querySelectorAll('#latent-body tr.latent')).map(tr => ({\n"
        "        sae: +tr.dataset.sae, index: +tr.dataset.index,"
        " type: tr.querySelector('td.type').textContent,\n"
        "        rate: +tr.querySelector('td.rate').textContent,"
        " freq: +tr.querySelector('td.freq').textContent || 0,\n"
        "        reappear: +tr.querySelector('td.reappear').textContent}))"
    )


@pytest.mark.slow
def test_the_study_page_in_chromium(finished_study, browser):
    from husai.analysis.compare import hook_ground_truth, model_context
    from husai.analysis.latent_types import latent_types
    from husai.sae.checkpoint import load_sae

    _, out, _, _ = finished_study
    d = browser
    seconds = _open(d, out / "browser.html")
    print(
        f"browser.html ready in {seconds:.2f} s "
        f"(in-page start-up {d.execute_script('return HB.readyMs'):.0f} ms)"
    )
    data = d.execute_script("return HB.data")

    # pick the third row of the first cell's list (sorted by reappearance) and click it
    rows = _rows(d)
    # "all seeds" lists the trained seeds; the oracle's pseudo-SAE is a seed of its own
    assert len(rows) == sum(
        s["n_live"]
        for s in data["saes"]
        if s["cell"] == data["saes"][0]["cell"] and not s["oracle"]
    )
    target = rows[2]
    d.find_elements("css selector", "#latent-body tr.latent")[2].click()
    _wait(d, f"HB.view && HB.view.sae === {target['sae']} && HB.view.latent === {target['index']}")
    e = data["saes"][target["sae"]]
    p = data["models"][e["model"]]["p"]

    # the card names the latent that was clicked, and its row is marked
    assert (
        f"seed {e['seed']} · latent {target['index']}" in d.find_element("id", "latent-card").text
    )
    sel = d.find_elements("css selector", "#latent-body tr.sel")
    marked = [(int(r.get_attribute("data-sae")), int(r.get_attribute("data-index"))) for r in sel]
    assert marked == [(target["sae"], target["index"])]

    # the heatmap's values are the SAE's own activations of that latent (within half a level)
    sae = load_sae(e["path"])
    ctx = model_context(out / "models" / "seed0", e["hook"])
    with torch.no_grad():
        z_all = sae.encode(ctx["acts"].float()).double()
    z = z_all[:, target["index"]].numpy()
    k = e["latents"]["index"].index(target["index"])
    v = np.array(d.execute_script("return Array.from(HB.view.values)"))
    level = e["scale"][k] / LEVELS
    weak = (z > 0) & (z < level / 2)  # firing, however weakly: drawn at one level, never as silent
    assert np.abs(v - z)[~weak].max() <= level * (0.5 + 1e-4) and np.allclose(
        v[weak], level, rtol=1e-5
    )
    assert ((v > 0) == (z > 0)).all()
    # ... and the canvas shows them: the brightest cell in the top colour, a silent cell in the
    # bottom one
    pix = d.execute_script("""const c = document.getElementById('heatmap'), g = c.getContext('2d');
        return Array.from(g.getImageData(0, 0, c.width, c.height).data)""")
    pix = np.array(pix).reshape(p * p, 4)[:, :3]
    top, bottom = d.execute_script("return [HB.colour(1), HB.colour(0)]")
    assert pix[int(np.argmax(v))].tolist() == top
    if (v == 0).any():
        assert pix[int(np.argmin(v))].tolist() == bottom
    # E[z | c], the 2-D spectrum and the top inputs, each against numpy on the same values
    c = (np.arange(p)[:, None] + np.arange(p)[None, :]).reshape(-1) % p
    prof = np.array([v[c == j].mean() for j in range(p)])
    np.testing.assert_allclose(d.execute_script("return HB.view.profile"), prof, atol=1e-6)
    power = np.abs(np.fft.fft2((v - v.mean()).reshape(p, p))) ** 2
    np.testing.assert_allclose(
        d.execute_script("return Array.from(HB.view.spectrum)"),
        power.reshape(-1),
        atol=1e-6 * power.max(),
    )

    # ... and the canvases draw them: the spectrum's peak (zero frequency at the centre) in the top
    # colour, the profile's line reaching the top of its plot at the answer of its maximum
    def canvas(cid):
        return np.array(
            d.execute_script(
                f"const c = document.getElementById('{cid}'), g = c.getContext('2d');\n"
                "            return [c.width, c.height,"
                " Array.from(g.getImageData(0, 0, c.width, c.height).data)]"
            )[2]
        )

    spec = canvas("spectrum").reshape(p, p, 4)[:, :, :3]
    u, w = np.unravel_index(int(np.argmax(power)), (p, p))
    assert spec[(u + p // 2) % p, (w + p // 2) % p].tolist() == top
    W, H = d.execute_script(
        "const c = document.getElementById('profile'); return [c.width, c.height]"
    )
    line = canvas("profile").reshape(H, W, 4)
    blue = (line[:, :, 2] > 150) & (line[:, :, 0] < 80)  # the profile's stroke colour (#1565c0)
    ys, xs = np.nonzero(blue)
    assert (
        ys.min() <= 14
        and abs(xs[ys.argmin()] - (2 + int(np.argmax(prof)) / (p - 1) * (W - 4))) <= 3
    )
    tops = d.execute_script("return HB.view.tops")
    first = tops[0]["a"] * p + tops[0]["b"]
    assert first in np.flatnonzero(v == v.max()) and tops[0]["c"] == c[first]
    # the decoder's composition is latent_types' own (the ground truth of this hook)
    types = latent_types(z_all, sae.W_dec.double(), hook_ground_truth(ctx))["latents"]
    lat = next(x for x in types if x["index"] == target["index"])
    comp = d.execute_script("return HB.view.composition")
    np.testing.assert_allclose(
        comp["out"], [lat["in_output"][str(q)] for q in comp["keys"]], atol=5.1e-3
    )  # 2 decimals
    np.testing.assert_allclose(comp["off"], lat["off_span"], atol=6e-4)

    check_new_panels(d, out, e, target, z_all, data)

    # its best match in each of the other two seeds and in the oracle, side by side; a click opens
    # the match
    cards = d.find_elements("css selector", "#matches .match")
    assert len(cards) == 3 and len(d.find_elements("css selector", "#matches canvas")) == 12
    assert "oracle" in cards[2].text
    j = int(cards[0].get_attribute("data-latent"))
    o = int(cards[0].get_attribute("data-sae"))
    assert data["saes"][o]["cell"] == e["cell"] and o != target["sae"]
    assert j == e["matches"][str(o)][0][k]
    cards[0].click()
    _wait(d, f"HB.view.sae === {o} && HB.view.latent === {j}")

    # filters, search and sorting
    counts = {}
    trained = [s for s in data["saes"] if s["cell"] == e["cell"] and not s["oracle"]]
    for s in trained:
        for t in s["latents"]["type"]:
            counts[t] = counts.get(t, 0) + 1
    t = max(counts, key=counts.get)
    _pick(d, "type-filter", str(t))
    rows = _rows(d)
    assert len(rows) == counts[t] and {r["type"] for r in rows} == {data["types"][t]}
    _pick(d, "type-filter", "any")
    keys = data["models"][0]["hooks"][e["hook"]]["key_frequencies"]
    n_k = sum(f == keys[0] for s in trained for f in s["latents"]["freq"])
    _pick(d, "freq-filter", str(keys[0]))
    assert len(_rows(d)) == n_k and {r["freq"] for r in _rows(d)} <= {keys[0]}
    _pick(d, "freq-filter", "any")
    _pick(d, "sort-key", "reappear")
    _pick(d, "sort-dir", "desc")
    reap = [r["reappear"] for r in _rows(d)]
    assert reap == sorted(reap, reverse=True)
    rates = [r for s in trained for r in s["latents"]["rate"]]
    cut = round(float(np.median(rates)), 3)
    d.find_element("id", "min-rate").send_keys(str(cut))
    assert len(_rows(d)) == sum(r >= cut for r in rates) < len(reap) and all(
        r["rate"] >= cut for r in _rows(d)
    )
    d.find_element("id", "min-rate").clear()
    d.execute_script("document.getElementById('min-rate').dispatchEvent(new Event('input'))")
    _pick(d, "sort-key", "rate")
    _pick(d, "sort-dir", "asc")
    rates = [r["rate"] for r in _rows(d)]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    search = d.find_element("id", "search")
    search.send_keys(str(target["index"]))
    rows = _rows(d)
    assert rows and {r["index"] for r in rows} == {target["index"]} and len(rows) <= 3
    search.clear()
    _pick(d, "seed-select", str(target["sae"]))
    assert {r["sae"] for r in _rows(d)} == {target["sae"]}

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "browser_latent.png"))
    # the model page: the ground truth a latent is compared with, neurons as heatmaps
    d.find_element("id", "tab-model").click()
    _wait(d, "document.querySelectorAll('#model-page .neurons canvas').length > 0")
    n_examples = len(data["models"][0]["neurons"]["examples"]["index"])
    assert len(d.find_elements("css selector", "#model-page .neurons canvas")) == n_examples > 0
    assert "key frequencies" in d.find_element("id", "model-page").text
    d.save_screenshot(str(ARTIFACTS / "browser_model.png"))
    assert _console_errors(d) == [] and d.execute_script("return HB.errors") == []


@pytest.mark.slow
def test_a_link_to_a_latent_opens_it_and_browse_rewrites_only_its_own_page(
    finished_study, browser, tmp_path
):
    import subprocess

    from study_harness import ENV, HUSAI

    _, out, _, _ = finished_study
    cell = next(p.parent for p in (out / "saes").rglob("analysis.json"))
    # a train-sae style folder (the cell, its seeds) browsed on its own, with the model given
    page = tmp_path / "cell.html"
    r = subprocess.run(
        HUSAI + ["browse", str(cell), "--model", str(out / "models" / "seed0"), "--out", str(page)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr
    again = subprocess.run(
        HUSAI + ["browse", str(cell), "--model", str(out / "models" / "seed0"), "--out", str(page)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr
    d = browser
    d.get(page.resolve().as_uri())
    _wait(d, "window.HB && (HB.ready || HB.errors.length > 0)")
    data = d.execute_script("return HB.data")
    s1 = data["saes"][1]
    last = s1["latents"]["index"][-1]
    # the address names the cell, seed and latent (not a position that changes when cells are added)
    link = page.resolve().as_uri() + f"#cell={s1['cell']}&seed={s1['seed']}&latent={last}"
    d.get("about:blank")
    d.get(link)
    _wait(d, "window.HB && (HB.ready || HB.errors.length > 0)")
    assert d.execute_script("return [HB.view.sae, HB.view.latent]") == [1, last]
    first = data["saes"][2]["latents"]["index"][0]
    d.execute_script(
        f"location.hash = 'cell={data['saes'][2]['cell']}"
        f"&seed={data['saes'][2]['seed']}&latent={first}'"
    )
    _wait(
        d, f"HB.view.sae === 2 && HB.view.latent === {first}"
    )  # a changed address opens its latent
    # one cell: one self-contained file, its payload inside the page, no data folder beside it
    assert len(data["saes"]) == 4 and data["saes"][3]["oracle"] and _console_errors(d) == []
    assert "file" not in data["cells"][0] and not (tmp_path / "cell_data").exists()
    assert d.execute_script("return HB.loadedScripts") == []
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cell.html"]


@pytest.mark.slow
def test_the_study_page_loads_each_cells_file_when_the_cell_is_opened(
    finished_study, browser, tmp_path
):
    """A study's page holds only the index: each cell's data is browser_data/cell_NNN.js, added as
    a <script src> when the cell is first opened, under file:// with no server."""
    _, out, _, _ = finished_study
    html = (out / "browser.html").read_text()
    files = sorted((out / "browser_data").iterdir())
    cells = sorted(c.parent for c in (out / "saes").rglob("analysis.json"))
    assert [f.name for f in files] == [f"cell_{i:03d}.js" for i in range(len(cells))]
    # no activation blob in the page, and it is a small part of the whole
    assert 'id="z' not in html and 'id="e' not in html
    total = sum(f.stat().st_size for f in files)
    print(f"study page {len(html.encode()) / 1e3:.0f} kB, cell files {total / 1e3:.0f} kB")
    assert len(html.encode()) < 0.3 * total
    d = browser
    _open(d, out / "browser.html")
    data = d.execute_script("return HB.data")
    assert [c["file"] for c in data["cells"]] == [f"browser_data/{f.name}" for f in files]
    # only the first cell's file was read: the second cell's SAEs hold no latents yet
    assert d.execute_script("return HB.loadedScripts") == [data["cells"][0]["file"]]
    second = data["cells"][1]
    assert all("latents" not in data["saes"][i] for i in second["saes"])
    _pick(d, "cell-select", second["label"])
    _wait(
        d,
        "HB.loadedScripts.length === 2 && document.querySelectorAll('#latent-body tr').length > 0",
    )
    assert d.execute_script("return HB.loadedScripts")[1] == second["file"]
    assert d.execute_script("return document.querySelectorAll('script[data-cell]').length") == 2
    n = d.execute_script(
        "return HB.data.cells[1].saes.filter(i => !HB.data.saes[i].oracle)"
        ".reduce((n, i) => n + HB.data.saes[i].latents.index.length, 0)"
    )
    assert len(_rows(d)) == n > 0
    d.find_elements("css selector", "#latent-body tr.latent")[0].click()
    _wait(d, "HB.view && HB.data.cells[1].saes.includes(HB.view.sae)")
    # back to the first cell: its file is not read again
    _pick(d, "cell-select", data["cells"][0]["label"])
    _wait(d, "document.querySelectorAll('#latent-body tr').length > 0")
    assert len(d.execute_script("return HB.loadedScripts")) == 2
    assert _console_errors(d) == [] and d.execute_script("return HB.errors") == []

    # a missing cell file is named on the page, not a blank card
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "browser.html", copy / "browser.html")
    shutil.copytree(out / "browser_data", copy / "browser_data")
    (copy / "browser_data" / files[1].name).unlink()
    _open(d, copy / "browser.html")
    _pick(d, "cell-select", second["label"])
    _wait(d, "HB.errors.length > 0")
    assert "cannot read browser_data/cell_001.js" in d.find_element("id", "status").text
