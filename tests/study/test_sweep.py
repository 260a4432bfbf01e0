"""The sweep's points, curves and headline (husai.study.sweep), on a hand-made results table with
its analysis.json files: a cell's figures are its seeds' means, model seeds are averaged with their
range, and recovery is the atom MCC minus the better no-learning reference of the hook's own atom
set."""

from __future__ import annotations

import math

import pytest

from husai.io import write_json
from husai.study.sweep import curves, headline, knob, sweep_points, sweep_table


def _cell(
    root,
    run,
    hook,
    arch,
    latents,
    model_seed,
    l0s,
    stab,
    effect,
    mcc,
    refs,
    answer_share=0.9,
    k=None,
    target_l0=None,
):
    atoms = {
        "answer_centroids": {
            "mcc": mcc,
            "random_reference": {"mcc": refs[0]},
            "data_point_reference": {"mcc": refs[1]},
        },
        "neurons": {
            "mcc": mcc - 0.5,
            "random_reference": {"mcc": 0.0},
            "data_point_reference": None,
        },
    }
    write_json(
        root / run / "analysis.json",
        dict(
            ground_truth={"variance": {"answer": answer_share}},
            fourier={f"seed {i}": {"recovery": {"atoms": atoms}} for i in range(len(l0s))},
        ),
    )
    return [
        dict(
            run=run,
            hook=hook,
            architecture=arch,
            latents=latents,
            model_seed=model_seed,
            status="ok",
            k=k,
            target_l0=target_l0,
            l1_coeff=None if k else 3.0,
            l0_coeff=None,
            seed=i,
            l0=l0,
            explained_variance=0.9,
            frac_dead=0.0,
            pw_mcc_dec=stab,
            pw_mcc_dec_ci_lo=stab - 0.01,
            pw_mcc_dec_ci_hi=stab + 0.01,
            pw_mcc_dec_null=stab - effect,
            pw_mcc_dec_effect=effect,
            pw_mcc_dec_effect_ci_lo=effect - 0.02,
            pw_mcc_dec_effect_ci_hi=effect + 0.02,
        )
        for i, l0 in enumerate(l0s)
    ]


@pytest.fixture
def table(tmp_path):
    rows = []
    for ms, shift in ((0, 0.0), (1, 0.1)):
        rows += _cell(
            tmp_path,
            f"m{ms}/resid/topk_n64_k8",
            "resid",
            "topk",
            64,
            ms,
            [8, 8],
            0.8,
            0.1 + shift,
            0.9,
            (0.5, 0.7),
            k=8,
        )
        rows += _cell(
            tmp_path,
            f"m{ms}/resid/topk_n256_k8",
            "resid",
            "topk",
            256,
            ms,
            [8, 8],
            0.7,
            0.05 + shift,
            0.8,
            (0.6, 0.75),
            k=8,
        )
        rows += _cell(
            tmp_path,
            f"m{ms}/mlp/relu_n64_t8",
            "mlp",
            "relu",
            64,
            ms,
            [6, 10],
            0.6,
            0.2,
            0.9,
            (0.1, 0.2),
            answer_share=0.1,
            target_l0=8,
        )
    rows.append(dict(rows[0], run="m0/resid/failed", status="failed"))
    return tmp_path, rows


def test_points_are_the_seeds_means_and_recovery_uses_the_hooks_atoms(table):
    root, rows = table
    pts = {p["run"]: p for p in sweep_points(root, rows)}
    assert "m0/resid/failed" not in pts and len(pts) == 6
    p = pts["m0/resid/topk_n64_k8"]
    assert p["knob"] == "k 8" and p["l0"] == 8 and p["stability"] == 0.8
    assert p["atoms"] == "answer_centroids" and p["recovery"] == pytest.approx(
        0.9 - 0.7
    )  # the better reference
    q = pts["m0/mlp/relu_n64_t8"]
    assert q["knob"] == "target L0 8" and q["l0"] == 8  # (6 + 10) / 2
    assert q["atoms"] == "neurons" and q["recovery"] == pytest.approx(
        0.4 - 0.0
    )  # answer share 0.1: the neurons


def test_curves_average_model_seeds_with_their_t_interval(table):
    root, rows = table
    by_width = curves(sweep_points(root, rows), "knob", "latents")
    c = by_width[("resid", "topk", "k 8")]
    assert [r["latents"] for r in c] == [64, 256]
    assert c[0]["n_models"] == 2 and c[0]["stability_effect"] == pytest.approx(
        0.15
    )  # (0.1 + 0.2) / 2
    # 95% t-interval of the mean of 0.1 and 0.2: sd 0.05 sqrt(2), t(0.975, 1 df) = 12.706
    half = 12.7062047 * (0.05 * math.sqrt(2)) / math.sqrt(2)
    assert (c[0]["stability_effect_lo"], c[0]["stability_effect_hi"]) == pytest.approx(
        (0.15 - half, 0.15 + half), abs=1e-6
    )
    by_l0 = curves(sweep_points(root, rows), "latents", "l0")
    assert set(by_l0) == {("resid", "topk", 64), ("resid", "topk", 256), ("mlp", "relu", 64)}


def test_one_model_seed_uses_the_seeds_ci(table):
    root, rows = table
    one = [r for r in rows if r["model_seed"] == 0]
    c = curves(sweep_points(root, one), "knob", "latents")[("resid", "topk", "k 8")]
    assert (c[0]["stability_effect_lo"], c[0]["stability_effect_hi"]) == pytest.approx((0.08, 0.12))


def test_headline_names_the_trend_and_the_table_every_cell(table):
    root, rows = table
    pts = sweep_points(root, rows)
    lines = headline(pts)
    assert len(lines) == 2 and lines[1].startswith("Sweep, topk at resid")
    assert "64 -> 256 latents (k 8): stability over chance 0.150 -> 0.100" in lines[1]
    assert "atom MCC over the no-learning reference 0.200 -> 0.050" in lines[1]
    # every cell's effect CI lies above 0 (effect - 0.02 > 0); recovery > 0 in all but none
    assert (
        lines[0].startswith("Across the sweep's 6 cells, the seeds agree beyond chance")
        and "in 6," in lines[0]
    )
    assert "reference in 6." in lines[0]
    assert (
        headline([p for p in pts if p["run"] == "m0/resid/topk_n64_k8"]) == []
    )  # one cell: no sweep
    assert sweep_table(pts).count("\n") == 2 + 6 - 1


def test_knob_names():
    assert knob(dict(architecture="topk", k=32)) == "k 32"
    assert knob(dict(architecture="relu", k=None, target_l0=16.0)) == "target L0 16"
    assert knob(dict(architecture="relu", k=None, target_l0=None, l1_coeff=2.5)) == "weight 2.5"
    assert knob(dict(architecture="jumprelu", target_l0=None, l0_coeff=4.0)) == "weight 4"


def test_a_cell_whose_l0_search_did_not_land_is_left_out_of_curves_and_trends(tmp_path):
    """l0_bracketed false: it trained at another L0 than its target, so no curve or trend holds it,
    and the table says why; the same cell with the search landed is a point of its curve."""
    rows = []
    for latents, landed in ((64, True), (256, False)):
        cell = _cell(
            tmp_path, f"m0/mlp/relu_n{latents}", "mlp", "relu", latents, 0, [8, 9], 0.7, 0.1,
            0.8, (0.5, 0.6), target_l0=8,
        )  # fmt: skip
        rows += [dict(r, l0_bracketed=landed) for r in cell]
    pts = sweep_points(tmp_path, rows)
    out = {p["latents"]: p["left_out"] for p in pts}
    assert out[64] is None and out[256] == "left out: the L0 search did not reach target L0 8"
    c = curves(pts, "knob", "latents")[("mlp", "relu", "target L0 8")]
    assert [r["latents"] for r in c] == [64]
    assert headline(pts) == []  # one cell left in: no sweep to report
    assert "left out: the L0 search did not reach target L0 8" in sweep_table(pts)
