"""`husai recover`: SAEs trained on a user's own activations, scored against the user's own ground
truth (atoms and planes in a safetensors file beside the activations)."""

from __future__ import annotations

import json

import pytest
import torch

from husai.io import save_tensors
from husai.sae.activations import save_activations

from planted import D, planted_hook
from test_compare import _cli, _sae


@pytest.fixture
def user_files(tmp_path):
    """The planted hook as a user's activation file, its answer centroids as atoms and two of its
    planes, an oracle SAE (decoder = the atoms) and a random one."""
    X, dirs, gt = planted_hook()
    acts = tmp_path / "acts.safetensors"
    save_activations(acts, X.float())
    atoms = gt.centroids
    save_tensors(
        tmp_path / "acts.ground_truth.safetensors",
        {
            "atoms": atoms.float().contiguous(),
            "plane.out3": dirs[4:6].float().contiguous(),
            "plane.in5": dirs[10:12].float().contiguous(),
        },
    )
    g = torch.Generator().manual_seed(5)
    # encoder = decoder^T: on centred data every atom's latent fires somewhere (TopK k = 4)
    # the oracle holds the atoms in another order and at other scales: matching must not rely on
    # either
    perm = torch.randperm(len(atoms), generator=g)
    scale = 0.5 + torch.rand(len(atoms), 1, generator=g, dtype=torch.float64)
    oracle = _sae(tmp_path / "oracle", atoms[perm] * scale, 1, "none", k=4)
    rand = _sae(
        tmp_path / "random",
        torch.randn(len(atoms), D, generator=g, dtype=torch.float64),
        2,
        "none",
        k=4,
    )
    return tmp_path, acts, oracle, rand, gt


def test_recover_scores_an_oracle_at_one_and_a_random_dictionary_at_its_reference(
    user_files, capsys, monkeypatch
):
    root, acts, oracle, rand, gt = user_files
    code, out, err = _cli(
        ["recover", oracle, rand, "--activations", acts, "--json", root / "r.json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    rep = json.loads((root / "r.json").read_text())
    assert rep["ground_truth"].endswith(
        "acts.ground_truth.safetensors"
    )  # found beside the activations
    o, r = rep["saes"]
    assert o["span_dim"] == 12  # the planted activations live in 12 dims
    live_atoms = o["atoms"]["atoms"]
    assert (
        o["n_live"] == len(gt.centroids)
        and live_atoms["mcc"] == pytest.approx(1.0)
        and live_atoms["f1"] == 1.0
    )
    assert live_atoms["random_reference"]["mcc"] < 0.9
    assert r["atoms"]["atoms"]["mcc"] == pytest.approx(
        r["atoms"]["atoms"]["random_reference"]["mcc"], abs=0.12
    )
    assert set(o["planes"]) == {"out3", "in5"} and o["planes"]["out3"]["variance_share"] > 0.2
    assert (
        o["off_data_span"] == pytest.approx(0.0, abs=1e-6) and r["off_data_span"] > 0.3
    )  # random rows leave it
    assert "recovery of the ground truth" in out
    # the user's atoms as an oracle at each SAE's L0 (TopK k 4: at most 4): its best code is at
    # least the centroid lookup (one atom, at scale 1, is one of the codes it searches), and the gap
    # is oracle EV minus the SAE's
    for sae in (o, r):
        orc = sae["oracle"]
        assert (
            1 <= orc["k"] <= 4
            and orc["l0"] <= orc["k"]
            and orc["explained_variance"] >= gt.centroid_ev - 1e-9
        )
        assert orc["gap"] == pytest.approx(
            orc["explained_variance"] - orc["sae_explained_variance"]
        )
    assert "oracle: the atoms as a dictionary" in out


def test_recover_without_a_ground_truth_file_is_one_clear_error(user_files, capsys, monkeypatch):
    root, acts, oracle, _, _ = user_files
    (root / "acts.ground_truth.safetensors").unlink()
    code, out, err = _cli(
        ["recover", oracle, "--activations", acts, "--json", root / "r.json"], capsys, monkeypatch
    )
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "no ground-truth file" in err
    assert not (root / "r.json").exists()
    save_tensors(root / "bad.safetensors", {"weights": torch.zeros(3, D)})
    code, _, err = _cli(
        ["recover", oracle, "--activations", acts, "--ground-truth", root / "bad.safetensors"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "plane.NAME" in err and "weights" in err
