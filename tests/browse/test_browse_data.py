"""The feature browser's data, checked against slow references and against the study's own analysis
(an independent implementation of the same per-latent stability), without a browser."""

import json
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from husai.browse.data import (
    LEVELS,
    MATCH_THRESHOLD,
    bytes85,
    find_cells,
    grid_layout,
    pack_levels,
    resolve_model,
    text85,
)
from husai.errors import HusaiError

from study_harness import ENV, HUSAI


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_grid_layout_is_a_permutation_and_answer_major(op):
    p = 11
    lay = grid_layout(p, op)
    assert sorted(lay.tolist()) == list(range(p * p))
    a, b = lay // p, lay % p
    if op == "mul":
        assert lay.tolist() == list(range(p * p))
        return
    c = (a + b) % p if op == "add" else (a - b) % p
    # position c*p + a holds the input (a, b) whose answer is c: rows of the stored grid are answers
    assert (c.reshape(p, p) == np.arange(p)[:, None]).all()
    assert (a.reshape(p, p) == np.arange(p)[None, :]).all()


def _unpack(blob: str, scale: list, lay: np.ndarray, n: int) -> np.ndarray:
    """The page's decoding, done by hand: inflate, levels -> values, layout -> rows a*p + b."""
    q = np.frombuffer(zlib.decompress(bytes85(blob)), np.uint8).reshape(n, -1)
    z = np.zeros((lay.size, n))
    z[lay] = q.T * (np.array(scale) / LEVELS)
    return z


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 8, 1001])
def test_text85_round_trip_and_safe_in_a_script_element(n):
    data = bytes(range(256)) * 4 + bytes([0xFF] * 8 + [0x3C, 0x2F])  # every byte value, and runs
    data = data[:n] if n < len(data) else data
    text = text85(data)
    assert (
        bytes85(text) == data
        and not set(text) & set("<>\"'\\")
        and len(text) == -(-len(data) * 5 // 4)
    )


def test_pack_levels_round_trip_within_half_a_level():
    p, n = 13, 6
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(p * p, n, generator=g, dtype=torch.float64)).numpy()
    z[:, 2] = 0.0  # an all-zero column must stay zero (no division by a zero scale)
    z[5, 3] = 1e-4 * z[:, 3].max()  # a weak firing stays visible: level 1, not 0
    lay = grid_layout(p, "add")
    blob, scale = pack_levels(z, lay)
    back = _unpack(blob, scale, lay, n)
    assert scale[2] == 0 and (back[:, 2] == 0).all()
    weak = (z > 0) & (z < np.array(scale) / (2 * LEVELS))
    assert weak[5, 3] and np.allclose(back[weak], (np.array(scale) / LEVELS * weak)[weak])
    err = np.abs(back - z)[~weak]
    assert (err <= np.broadcast_to(np.array(scale) / (2 * LEVELS), z.shape)[~weak] + 1e-9).all()
    assert (back[z == 0] == 0).all() and (back[z > 0] > 0).all()
    np.testing.assert_allclose(back.max(0), z.max(0), rtol=1e-5)


def test_find_cells_and_resolve_model(tmp_path):
    for cell in ("saes/m/h/a", "saes/m/h/b", "saes/m/h/.b.partial-x1"):
        for s in (1, 2):
            (tmp_path / cell / f"seed_{s}").mkdir(parents=True)
            (tmp_path / cell / f"seed_{s}" / "cfg.json").write_text("{}")
    (tmp_path / "one_seed").mkdir()
    (tmp_path / "one_seed" / "cfg.json").write_text("{}")  # a one-seed train-sae output
    # the staging folder a kill left (hidden) is not a cell
    assert find_cells(tmp_path) == [
        tmp_path / "one_seed",
        tmp_path / "saes/m/h/a",
        tmp_path / "saes/m/h/b",
    ]
    assert find_cells(tmp_path / "saes/m/h/a") == [tmp_path / "saes/m/h/a"]
    with pytest.raises(HusaiError, match="holds no SAEs"):
        (tmp_path / "empty").mkdir()
        find_cells(tmp_path / "empty")
    (tmp_path / "models" / "seed0").mkdir(parents=True)
    (tmp_path / "models" / "seed0" / "config.json").write_text("{}")
    # a recorded path that moved with the study is found under root/models
    assert (
        resolve_model("/elsewhere/runs/study/models/seed0", tmp_path, None)
        == tmp_path / "models" / "seed0"
    )
    with pytest.raises(HusaiError, match="pass --model"):
        resolve_model("/elsewhere/seed9", tmp_path, None)
    with pytest.raises(HusaiError, match="not a model run folder"):
        resolve_model(None, tmp_path, tmp_path / "saes")


@pytest.mark.slow
def test_study_page_holds_every_live_latent_with_its_activations_and_the_studys_stability(
    finished_study,
):
    """The study wrote browser.html; every SAE of every finished cell is in it, each latent's stored
    activations decode to the SAE's own activations, and the per-latent reappearance and mean best
    cosine equal what the study's stability analysis (husai.analysis.agreement) computed."""
    from husai.analysis.compare import model_context
    from husai.analysis.data_span import data_span
    from husai.browse.page import read_page
    from husai.sae.checkpoint import load_sae

    _, out, _, _ = finished_study
    html = (out / "browser.html").read_text()
    assert "http://" not in html and "https://" not in html  # offline: nothing fetched
    for f in (out / "browser_data").iterdir():
        assert "http://" not in f.read_text() and "https://" not in f.read_text()
    data, blobs = read_page(out / "browser.html")
    cells = sorted(c.parent for c in (out / "saes").rglob("analysis.json"))
    assert sorted({s["cell"] for s in data["saes"]}) == sorted(
        str(c.relative_to(out)) for c in cells
    )
    assert data["skipped"] and all("l1_0.1" in s for s in data["skipped"])  # the failed cell
    trained = [e for e in data["saes"] if not e["oracle"]]
    assert len(trained) == 3 * len(cells) and len(data["saes"]) == 4 * len(cells)
    from safetensors.torch import load_file

    W_U = load_file(str(out / "models" / "seed0" / "model.safetensors"))["unembed.W_U"].double()
    for i, e in enumerate(data["saes"]):
        if e["oracle"]:
            continue
        sae = load_sae(e["path"])
        ctx = model_context(out / "models" / "seed0", e["hook"])
        with torch.no_grad():
            z = sae.encode(ctx["acts"].float()).double().numpy()
        live = np.nonzero((z != 0).any(0))[0]
        assert e["latents"]["index"] == live.tolist()
        m = data["models"][e["model"]]
        lay = grid_layout(m["p"], m["operation"])
        back = _unpack(blobs[f"z{i}"], e["scale"], lay, len(live))
        # half a level (plus the scale's rounding to 6 digits in the page's JSON); a weak firing at
        # one level
        level = np.array(e["scale"]) / LEVELS
        zl = z[:, live]
        weak = (zl > 0) & (zl < level / 2)
        assert (
            np.abs(back - zl)[~weak] <= np.broadcast_to(level * (0.5 + 1e-4), zl.shape)[~weak]
        ).all()
        assert ((back > 0) == (zl > 0)).all()
        # every latent's logit effect, from the safetensors files: W_dec[live] @ W_U (resid_post)
        W_dec = load_file(str(Path(e["path"]) / "sae_weights.safetensors"))["W_dec"].double()
        eff = (W_dec[live] @ W_U).numpy()
        q = np.frombuffer(bytes85(blobs[f"e{i}"]), np.uint8).reshape(len(live), -1).astype(float)
        scale = np.abs(eff).max(1, keepdims=True)
        back = (q - 128) * np.array(e["effect_scale"])[:, None] / 127
        assert (np.abs(back - eff) <= scale / 254 * (1 + 1e-3)).all()
        assert e["l0"] == pytest.approx((z != 0).sum(1).mean(), abs=1e-3)
        analysis = json.loads((out / e["cell"] / "analysis.json").read_text())
        per = analysis["stability"]["per_latent"][f"seed {e['seed']}"]
        assert analysis["stability"]["threshold"] == MATCH_THRESHOLD
        assert per["index"] == e["latents"]["index"]
        np.testing.assert_allclose(e["latents"]["best_cos"], per["best_cos"], atol=2e-3)
        np.testing.assert_allclose(e["latents"]["reappear"], per["reappearance"], atol=2e-3)
        # each match is the other seed's live latent with the best cosine in the data span
        # (recomputed here)
        Q = data_span(ctx["acts"]).basis
        unit = lambda W: (W.double() @ Q) / (W.double() @ Q).norm(dim=1, keepdim=True)
        for other, (idx, cos, _, same) in e["matches"].items():
            o = data["saes"][int(other)]
            if o["oracle"]:  # the oracle tiling's card (tests/browse/browser_panels.py)
                continue
            C = unit(sae.W_dec[live]) @ unit(load_sae(o["path"]).W_dec[o["latents"]["index"]]).T
            best, arg = C.max(dim=1)
            assert idx == [o["latents"]["index"][j] for j in arg.tolist()]
            np.testing.assert_allclose(cos, best.numpy(), atol=6e-4)
            assert same == (best >= analysis["stability"]["threshold"]).int().tolist()


def test_browse_command_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run(
            HUSAI + ["browse", *map(str, args)], capture_output=True, text=True, env=ENV
        )

    for args, msg in (
        ([tmp_path / "missing"], "is not a folder"),
        ([tmp_path], "holds no SAEs"),
        ([tmp_path, "--out", tmp_path / "no" / "page.html"], "does not exist"),
    ):
        r = run(*args)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    r = run(tmp_path, "--out", mine)
    assert r.returncode == 2 and "husai never replaces" in r.stderr
    assert mine.read_text() == "<html>my notes</html>"
