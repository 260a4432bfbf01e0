"""Recovery of the ground truth (husai.analysis.recovery): an oracle dictionary scores 1, a random
one scores its reference, and plane coverage counts what the assigned latents span."""

from __future__ import annotations

import pytest
import torch

from husai.analysis.ground_truth import ground_truth
from husai.analysis.recovery import atom_scores
from husai.analysis.recovery import hook_recovery as recovery

from planted import D, P, grid_values, planted_hook, wave


@pytest.fixture(scope="module")
def hook():
    return planted_hook()


def test_hungarian_scores_on_a_hand_computed_case():
    atoms = torch.eye(3, dtype=torch.float64)
    rows = torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0.8, -0.6]], dtype=torch.float64)
    s = atom_scores(rows, atoms, threshold=0.7)
    # best assignment: row0-atom0 (1), row1-atom2 (0.8), row2-atom1 (0.8)
    assert s["mcc"] == pytest.approx((1 + 0.8 + 0.8) / 3)
    assert s["recall"] == 1.0 and s["precision"] == 1.0 and s["f1"] == 1.0
    s = atom_scores(rows, atoms, threshold=0.9)
    assert s["recall"] == pytest.approx(1 / 3) and s["precision"] == pytest.approx(1 / 3)


def test_an_oracle_of_the_answer_centroids_scores_one_and_a_random_dictionary_its_reference(hook):
    X, dirs, gt = hook
    g = torch.Generator().manual_seed(4)
    perm = torch.randperm(P, generator=g)  # another order, other scales, and dead distractor rows
    oracle = torch.cat(
        [
            gt.centroids[perm] * (0.5 + torch.rand(P, 1, generator=g, dtype=torch.float64)),
            torch.randn(5, D, dtype=torch.float64),
        ]
    )
    live = torch.ones(len(oracle), dtype=torch.bool)
    live[-5:] = False  # dead rows are not counted
    r = recovery(oracle, live, gt)
    cent = r["atoms"]["answer_centroids"]
    assert (
        cent["mcc"] == pytest.approx(1.0) and cent["f1"] == pytest.approx(1.0) and r["n_live"] == P
    )
    assert cent["random_reference"]["mcc"] < 0.9
    flipped = recovery(-oracle, live, gt)["atoms"]["answer_centroids"]
    assert (
        flipped["mcc"] < 0.5 and flipped["recall"] == 0.0
    )  # codes are >= 0: -centroid is another feature
    # an SAE's off-span part is invisible to the data: adding it changes nothing
    off = torch.linalg.qr(torch.cat([gt.span, torch.randn(D, 3, dtype=torch.float64)], 1))[0][
        :, -3:
    ]
    r2 = recovery(oracle + (torch.randn(len(oracle), 3, dtype=torch.float64) @ off.T) * 5, live, gt)
    assert r2["atoms"]["answer_centroids"]["mcc"] == pytest.approx(1.0)
    rand = (
        torch.randn(P, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        @ gt.span
        @ gt.span.T
    )
    r3 = recovery(rand, torch.ones(P, dtype=torch.bool), gt, draws=20)
    c3 = r3["atoms"]["answer_centroids"]
    assert c3["mcc"] == pytest.approx(c3["random_reference"]["mcc"], abs=0.1)


def test_an_oracle_of_single_frequency_neurons_recovers_them(hook):
    """At an mlp.hook_post the atoms are the neurons themselves (basis vectors): a dictionary made
    of them recovers every one with MCC 1."""
    a, b, c = grid_values()
    cols = [wave(c, k, i) + wave(a, k, 2 * i) for k in (2, 5) for i in range(3)]
    cols += [
        torch.randn(P * P, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in range(4)
    ]
    N = torch.stack(cols, 1)
    gt = ground_truth(N, P, "add", [2, 5], neurons=True)
    single = [e["index"] for e in gt.neurons["neurons"]]
    assert single == list(range(6))
    atoms = torch.eye(N.shape[1], dtype=torch.float64)[single]
    r = recovery(atoms, torch.ones(len(atoms), dtype=torch.bool), gt, neuron_atoms=atoms)
    assert (
        r["atoms"]["neurons"]["mcc"] == pytest.approx(1.0)
        and r["atoms"]["neurons"]["recall"] == 1.0
    )


def test_plane_coverage_and_mass(hook):
    X, dirs, gt = hook
    # three latents in output plane 3 (two independent directions), one in input plane 5
    W = torch.stack([dirs[4], dirs[5], (dirs[4] + dirs[5]) / 2, dirs[10]])
    r = recovery(W, torch.ones(4, dtype=torch.bool), gt)
    out3, out2, in5 = r["planes"]["out 3"], r["planes"]["out 2"], r["planes"]["in 5"]
    assert (
        out3["latents"] == 3
        and out3["coverage"] == pytest.approx(1.0)
        and out3["mass"] == pytest.approx(3 / 4)
    )
    assert (
        out2["latents"] == 0
        and out2["coverage"] == 0.0
        and out2["mass"] == pytest.approx(0.0, abs=1e-12)
    )
    assert in5["latents"] == 1 and in5["coverage"] == pytest.approx(
        0.5
    )  # one of its two directions
    assert out3["variance_share"] == pytest.approx(gt.planes[2].share)
    # a random dictionary in the span spends on each 2-d plane about 2/12 of its mass
    assert r["planes"]["out 3"]["random_reference"]["mass"] == pytest.approx(2 / 12, abs=0.08)


def test_no_live_latent_gives_missing_scores_not_a_crash(hook):
    X, dirs, gt = hook
    r = recovery(dirs[:3], torch.zeros(3, dtype=torch.bool), gt, data=X)
    cent = r["atoms"]["answer_centroids"]
    assert r["n_live"] == 0 and cent["mcc"] is None and cent["random_reference"]["mcc"] is None
    assert all(e["latents"] == 0 and e["mass"] is None for e in r["planes"].values())


def test_data_points_are_the_no_learning_bar_for_the_answer_centroids(hook):
    """The activations are p clusters, so random data points already match the centroids far better
    than random directions do: an SAE must beat that, not only the random reference."""
    X, dirs, gt = hook
    r = recovery(
        torch.randn(40, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
        torch.ones(40, dtype=torch.bool),
        gt,
        data=X,
    )
    cent = r["atoms"]["answer_centroids"]
    assert cent["data_point_reference"]["mcc"] > cent["random_reference"]["mcc"] + 0.1
