"""Checks of the latent card's logit-effect, activation-density and nearest-oracle-atom panels, and
of the oracle's pseudo-SAE, in a page open in Chromium (test_browser_page drives it): every value
against numbers computed here from the safetensors files on disk."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def wait(d, js: str, timeout: float = 20):
    t0 = time.time()
    while not d.execute_script("return " + js):
        assert time.time() - t0 < timeout, js
        time.sleep(0.05)


def pick(d, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", select_id)).select_by_value(value)


def listed(d) -> list[tuple[int, int]]:
    return d.execute_script(
        "return Array.from(document.querySelectorAll('#latent-body tr.latent'))"
        ".map(tr => [+tr.dataset.sae, +tr.dataset.index])"
    )


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.double() for k, v in load_file(str(path)).items()}


def logit_matrix(model_dir: Path, hook: str) -> np.ndarray:
    """The direct map to the logits, from model.safetensors itself: W_U, or W_out W_U."""
    w = weights(model_dir / "model.safetensors")
    M = w["unembed.W_U"]
    return (w["blocks.0.mlp.W_out"] @ M if hook.endswith("mlp.hook_post") else M).numpy()


def oracle_tiling(ctx: dict, seed: int, width: int):
    """The seed's tiling as the study cell's oracle builds it (husai.study.oracle_cell): the
    truth circles at the ground truth's key frequencies, the width rule, the seed's phases."""
    from husai.analysis.compare import hook_ground_truth
    from husai.analysis.ground_truth import group_grid, on_grid
    from husai.analysis.oracle import tiling, truth_circles

    grid = group_grid(ctx["p"], ctx["operation"])
    circles = truth_circles(
        on_grid(ctx["acts"], grid), grid, hook_ground_truth(ctx).key_frequencies
    )
    atoms, labels = tiling(circles, width, seed)
    return atoms.numpy(), labels, grid


def unit(W: np.ndarray) -> np.ndarray:
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def check_new_panels(d, out: Path, e: dict, target: dict, z_all: torch.Tensor, data: dict):
    from husai.analysis.compare import model_context

    i, s = target["index"], target["sae"]
    mdir = out / "models" / "seed0"
    W_dec = weights(Path(e["path"]) / "sae_weights.safetensors")["W_dec"].numpy()
    p = data["models"][e["model"]]["p"]

    # logit effect: W_dec[i] @ W_U (resid_post), to half a level of the page's 8 bits
    eff = W_dec[i] @ logit_matrix(mdir, e["hook"])
    page = np.array(d.execute_script("return HB.view.effect"))
    level = np.abs(eff).max() / 127
    assert page.shape == (p,) and np.abs(page - eff).max() <= level * (0.5 + 1e-4)
    top = d.execute_script("return HB.view.effectTop")
    bottom = d.execute_script("return HB.view.effectBottom")
    # the listed classes are the true top 5 and bottom 5, up to ties within a level
    assert eff[[t["c"] for t in top]].min() >= np.sort(eff)[-5] - level
    assert eff[[t["c"] for t in bottom]].max() <= np.sort(eff)[4] + level
    assert eff[top[0]["c"]] >= eff.max() - level and eff[bottom[0]["c"]] <= eff.min() + level
    cells = d.find_elements("css selector", "#logit-top tr")[1].find_elements("css selector", "td")
    assert int(cells[0].text) == top[0]["c"] and int(cells[2].text) == bottom[0]["c"]
    # its one-frequency share, from the full-precision effect
    P = np.abs(np.fft.fft(eff - eff.mean())) ** 2
    both = P[1 : p // 2 + 1] + P[p - 1 : p - p // 2 - 1 : -1]
    f = int(np.argmax(both)) + 1
    assert d.execute_script("return HB.view.effectFreq") == f
    assert abs(d.execute_script("return HB.view.effectShare") - both.max() / P.sum()) <= 1e-4
    assert f"f = {f}" in d.find_element("id", "latent-card").text

    # activation density: the histogram of log10 of the non-zero activations, 20 bins
    z = z_all[:, i].numpy()
    v = np.log10(z[z > 0])
    ref, _ = np.histogram(v, bins=20, range=(v.min(), v.max()))
    assert d.execute_script("return HB.view.density") == ref.tolist()
    assert f"{(z > 0).sum()} non-zero of {p * p} inputs" in d.find_element("id", "latent-card").text

    # nearest oracle atom: of this seed's tiling, by cosine in the model's basis
    ctx = model_context(mdir, e["hook"])
    atoms, labels, grid = oracle_tiling(ctx, int(e["seed"]), e["d_sae"])
    cos = unit(W_dec[i : i + 1]) @ atoms.T
    j = int(np.argmax(cos))
    near = d.execute_script("return HB.view.near")
    assert near["atom"] == j and abs(near["cos"] - cos[0, j]) <= 1e-4
    assert near["circle"] == labels[j]["circle"]
    assert f"cos {cos[0, j]:.3f}" in d.find_element("id", "near-atom").text

    # the filter "within cos 0.9 of an oracle atom" over the cell's trained seeds
    seeds = [k for k, o in enumerate(data["saes"]) if o["cell"] == e["cell"] and not o["oracle"]]
    near_rows, far_rows = set(), set()
    for k in seeds:
        o = data["saes"][k]
        A, _, _ = oracle_tiling(ctx, int(o["seed"]), o["d_sae"])
        W = weights(Path(o["path"]) / "sae_weights.safetensors")["W_dec"].numpy()
        best = (unit(W[o["latents"]["index"]]) @ A.T).max(1)
        for idx, b in zip(o["latents"]["index"], best):
            (near_rows if b >= 0.9 else far_rows).add((k, idx))
    pick(d, "near-filter", "near")
    assert set(map(tuple, listed(d))) == near_rows
    pick(d, "near-filter", "far")
    assert set(map(tuple, listed(d))) == far_rows
    pick(d, "near-filter", "any")

    # the oracle's pseudo-SAE: the first seed's tiling, its atoms firing on their arcs
    orc = next(k for k, o in enumerate(data["saes"]) if o["cell"] == e["cell"] and o["oracle"])
    first = data["saes"][seeds[0]]
    A, labels, grid = oracle_tiling(ctx, int(first["seed"]), first["d_sae"])
    X = ctx["acts"].numpy()
    X = X - X[grid.rows.numpy()].mean(0)
    thresh = np.array([a["radius"] * np.cos(a["spacing"]) for a in labels])
    code = np.maximum(X @ A.T - thresh, 0)
    live = np.flatnonzero((code[grid.rows.numpy()] > 0).any(0))
    pick(d, "seed-select", str(orc))
    rows = listed(d)
    assert sorted(r[1] for r in rows) == live.tolist() and {r[0] for r in rows} == {orc}
    d.find_elements("css selector", "#latent-body tr.latent")[0].click()
    wait(d, f"HB.view.sae === {orc}")
    a = d.execute_script("return HB.view.latent")
    assert d.execute_script("return HB.view.near.cos") >= 0.9999  # an atom's nearest is itself
    oeff = A[a] @ logit_matrix(mdir, e["hook"])
    opage = np.array(d.execute_script("return HB.view.effect"))
    assert np.abs(opage - oeff).max() <= np.abs(oeff).max() / 127 * (0.5 + 1e-4)
    vals, c = np.array(d.execute_script("return Array.from(HB.view.values)")), code[:, a]
    lvl = c.max() / 15
    weak = (c > 0) & (c < lvl / 2)  # drawn at one level, never as silent
    assert np.abs(vals - c)[~weak].max() <= lvl * (0.5 + 1e-4) and ((vals > 0) == (c > 0)).all()
    assert "oracle" in d.find_element("id", "latent-card").text
    pick(d, "seed-select", "all")
    d.execute_script(f"select({s}, {i})")
    wait(
        d, f"HB.view.sae === {s} && HB.view.latent === {i} && !!document.getElementById('matches')"
    )
