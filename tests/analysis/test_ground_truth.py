"""The ground truth of a hook (husai.analysis.ground_truth) on planted activations whose structure
is known by construction, against slow references (group means, the additive-DFT purity)."""

from __future__ import annotations

import math

import pytest
import torch

from husai.analysis.ground_truth import (
    class_centroids,
    frequency_purity,
    ground_truth,
    group_grid,
    key_frequencies_on_grid,
    on_grid,
    primitive_root,
    variance_decomposition,
)
from husai.errors import HusaiError
from husai.model.fourier import frequency_fractions, key_frequencies

from planted import grid_values, wave

P = 13


def directions(d: int, m: int, seed: int = 0) -> torch.Tensor:
    """m orthonormal directions in R^d -> [m, d]."""
    Q, _ = torch.linalg.qr(
        torch.randn(d, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return Q.T


def group_mean_share(X: torch.Tensor, labels: torch.Tensor) -> float:
    """Slow reference: share of the centred variance explained by the means over each label."""
    X = X - X.mean(0)
    means = torch.stack([X[labels == v].mean(0) for v in labels.unique()])
    fitted = means[torch.searchsorted(labels.unique(), labels)]
    return float(fitted.pow(2).sum() / X.pow(2).sum())


@pytest.mark.parametrize("operation", ["add", "sub"])
def test_variance_decomposition_matches_group_means(operation):
    a, b, c = grid_values(P, operation)
    X = torch.randn(P * P, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    X += (
        3 * torch.randn(P, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))[c]
    )  # a strong answer part
    grid = group_grid(P, operation)
    v = variance_decomposition(on_grid(X, grid), grid)
    conj = (a - b) % P if operation == "add" else (a + b) % P
    assert v["answer"] == pytest.approx(group_mean_share(X, c), abs=1e-10)
    assert v["a"] == pytest.approx(group_mean_share(X, a), abs=1e-10)
    assert v["b"] == pytest.approx(group_mean_share(X, b), abs=1e-10)
    assert v["conjugate"] == pytest.approx(group_mean_share(X, conj), abs=1e-10)
    assert sum(v.values()) == pytest.approx(1.0)
    assert v["answer"] > 0.5 and v["rest"] > 0.05  # the noise is mostly interaction


def test_a_planted_sum_of_planes_decomposes_exactly():
    """X = output planes of k = 2, 5 (answer), input planes of k = 2 (a and b on the same 2
    directions, as in a trained model), an a-b wave and one interaction term: every share is
    known in closed form (each cos/sin column over the grid has squared norm N/2)."""
    a, b, c = grid_values(P)
    D = directions(16, 9)
    parts = {  # name: (list of (function over the grid, direction)), amplitude
        "out2": [(wave(c, 2), D[0]), (wave(c, 2, -math.pi / 2), D[1])],
        "out5": [(wave(c, 5), 2 * D[2]), (wave(c, 5, -math.pi / 2), 2 * D[3])],
        "in2": [
            (wave(a, 2), D[4]),
            (wave(a, 2, -math.pi / 2), D[5]),
            (wave(b, 2), D[4]),
            (wave(b, 2, -math.pi / 2), D[5]),
        ],
        "conj": [(wave(a - b, 3), 0.5 * D[6])],
        "rest": [(wave(a, 1) * wave(b, 4), D[7])],
    }
    X = sum(f[:, None] * v[None, :] for terms in parts.values() for f, v in terms)
    energy = {
        name: sum(float(f.pow(2).sum() * v.pow(2).sum()) for f, v in terms)
        for name, terms in parts.items()
    }
    total = sum(energy.values())
    gt = ground_truth(X, P, "add", key_freqs=[2, 5])
    assert gt.variance["answer"] == pytest.approx(
        (energy["out2"] + energy["out5"]) / total, abs=1e-12
    )
    assert gt.variance["a"] + gt.variance["b"] == pytest.approx(energy["in2"] / total, abs=1e-12)
    assert gt.variance["a"] == pytest.approx(gt.variance["b"], abs=1e-12)
    assert gt.variance["conjugate"] == pytest.approx(energy["conj"] / total, abs=1e-12)
    assert gt.variance["rest"] == pytest.approx(energy["rest"] / total, abs=1e-12)
    j = gt.to_json()
    assert j["planes"]["out 2"]["dim"] == 2 and j["planes"]["out 2"]["share"] == pytest.approx(
        energy["out2"] / total
    )
    assert j["planes"]["out 5"]["share"] == pytest.approx(energy["out5"] / total)
    assert j["planes"]["in 2"]["dim"] == 2 and j["planes"]["in 2"][
        "a_b_principal_cosines"
    ] == pytest.approx([1.0, 1.0])
    assert j["planes"]["in 5"]["share"] == pytest.approx(0.0, abs=1e-12)
    # the planes span exactly the six directions used by them; the others lie outside
    assert j["span"]["dim"] == 6
    inside = (energy["out2"] + energy["out5"] + energy["in2"]) / total
    assert j["span"]["share"] == pytest.approx(inside, abs=1e-12)
    assert j["baselines"]["planes_functions"] == pytest.approx(inside, abs=1e-12)
    labels, M = j["plane_max_cosines"]["labels"], j["plane_max_cosines"]["matrix"]
    assert M[labels.index("out 2")][labels.index("out 5")] == pytest.approx(0.0, abs=1e-9)
    assert M[labels.index("out 2")][labels.index("out 2")] == pytest.approx(1.0)


def test_centroid_lookup_explains_exactly_the_answer_share_and_pca_is_monotone():
    X = torch.randn(P * P, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, _, c = grid_values(P)
    X += 2 * torch.randn(P, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)[c]
    j = ground_truth(X, P, key_freqs=[1]).to_json()
    assert j["baselines"]["centroid_lookup"]["explained_variance"] == pytest.approx(
        j["variance"]["answer"], abs=1e-10
    )
    pca = [j["baselines"]["pca"][str(r)] for r in (2, 4, 8, 16)]
    assert pca == sorted(pca) and 0 < pca[0] < pca[-1] < 1
    # PCA's rank-r EV is the top-r eigenvalue share: check r = 2 against numpy-free eigh
    Xc = X - X.mean(0)
    ev = torch.linalg.eigvalsh(Xc.T @ Xc).flip(0)
    assert pca[0] == pytest.approx(float(ev[:2].sum() / ev.sum()))


def test_class_centroids_are_the_answer_means():
    X = torch.randn(P * P, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grid = group_grid(P)
    Xg = on_grid(X, grid)
    C = class_centroids(Xg, grid)
    _, _, c = grid_values(P)
    for v in (0, 4, 12):
        assert torch.allclose(C[v], (X - X.mean(0))[c == v].mean(0))


def test_frequency_purity_is_the_additive_fraction_for_addition():
    X = torch.randn(P * P, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a, b, _ = grid_values(P)
    X[:, 0] = wave(a, 3) * wave(b, 3, 0.4)  # a single-frequency neuron
    grid = group_grid(P)
    purity = frequency_purity(on_grid(X, grid), grid)
    assert torch.allclose(purity, frequency_fractions(X, P), atol=1e-10)
    assert purity[0, 2] == pytest.approx(1.0)


def test_single_frequency_neurons_and_their_clusters():
    a, b, c = grid_values(P)
    cols, planted = [], {2: 3, 6: 2}
    for k, count in planted.items():
        for i in range(count):
            cols.append(wave(c, k, i) + wave(a, k, 2 * i))  # frequency k only: single-frequency
    cols.append(
        torch.randn(P * P, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    )  # noise neuron
    X = torch.stack(cols, dim=1)
    j = ground_truth(X, P, key_freqs=[2, 6], neurons=True).to_json()
    n = j["atoms"]["single_frequency_neurons"]
    assert n["count"] == 5 and n["of"] == 6 and n["clusters"] == planted
    assert [e["index"] for e in n["neurons"]] == [0, 1, 2, 3, 4]
    grid = group_grid(P)
    assert (
        key_frequencies_on_grid(X, grid) == [2, 6] == key_frequencies(X, P)[0]
    )  # the model's own rule, for add


def test_key_frequencies_are_found_without_the_model():
    _, _, c = grid_values(P)
    D = directions(8, 4)
    X = (
        wave(c, 4)[:, None] * D[0]
        + wave(c, 4, -math.pi / 2)[:, None] * D[1]
        + 0.7 * wave(c, 1)[:, None] * D[2]
    )
    assert ground_truth(X, P).key_frequencies == [1, 4]


def test_multiplication_uses_the_discrete_logarithm():
    p = 11
    g = primitive_root(p)
    assert sorted(pow(g, e, p) for e in range(p - 1)) == list(range(1, p))
    a, b, c = grid_values(p, "mul")
    log = {pow(g, e, p): e for e in range(p - 1)}
    keep = (a > 0) & (b > 0)
    lc = torch.tensor([log[int(v)] if v else 0 for v in c])
    D = directions(6, 2)
    X = torch.zeros(p * p, 6, dtype=torch.float64)
    X[keep] = (
        wave(lc, 3, n=p - 1)[:, None] * D[0] + wave(lc, 3, -math.pi / 2, n=p - 1)[:, None] * D[1]
    )[keep]
    # the rows with a = 0 or b = 0 (answer 0) are outside the group: at the mean, they add nothing
    X[~keep] = 0.0
    gt = ground_truth(X, p, "mul")
    assert gt.grid.rows.numel() == (p - 1) ** 2 and gt.grid.n == p - 1
    assert gt.variance["answer"] == pytest.approx(1.0, abs=1e-12)
    assert gt.key_frequencies == [3]
    assert gt.to_json()["planes"]["out 3"]["share"] == pytest.approx(1.0, abs=1e-12)
    shifted = X.clone()
    shifted[~keep] = 100.0  # whatever the excluded rows hold, they do not count
    assert ground_truth(shifted, p, "mul").variance == pytest.approx(gt.variance)
    # the additive DFT would see no answer structure in it
    add = ground_truth(X, p, "add", key_freqs=[1])
    assert add.variance["answer"] < 0.5


def test_bad_input_is_refused():
    with pytest.raises(HusaiError, match="all 13"):
        ground_truth(torch.zeros(10, 3), P)
    with pytest.raises(HusaiError, match="constant"):
        ground_truth(torch.ones(P * P, 3), P)
    with pytest.raises(HusaiError, match="key frequency 7"):
        ground_truth(torch.randn(P * P, 3, dtype=torch.float64), P, key_freqs=[7])


def test_the_ground_truth_command_on_a_grokked_model(grokked_run, tmp_path):
    """husai ground-truth on a real grokked model: the neuron clusters are the model's own
    (metrics.json, from husai.model.fourier), the answer dominates resid_post, and the JSON holds
    every hook asked for."""
    import json
    import subprocess

    from cli_harness import ENV, HUSAI

    run, metrics = grokked_run
    out = tmp_path / "gt.json"
    r = subprocess.run(
        HUSAI
        + [
            "ground-truth",
            str(run),
            "--hook",
            "blocks.0.hook_resid_post",
            "--hook",
            "blocks.0.mlp.hook_post",
            "--json",
            str(out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    resid, neurons = j["hooks"]["blocks.0.hook_resid_post"], j["hooks"]["blocks.0.mlp.hook_post"]
    assert resid["key_frequencies"] == metrics["key_frequencies"]
    clusters = neurons["atoms"]["single_frequency_neurons"]["clusters"]
    assert {int(k): v for k, v in clusters.items()} == {
        int(k): v for k, v in metrics["neurons_per_key_frequency"].items()
    }
    assert resid["variance"]["answer"] > 0.5 > neurons["variance"]["answer"]
    assert resid["span"]["share"] > 0.9 and resid["span"]["dim"] == 4 * len(
        resid["key_frequencies"]
    )
    assert "answer" in r.stdout and "centroid EV" in r.stdout


def test_an_oracle_made_of_the_models_own_neurons_recovers_their_clusters(grokked_run):
    """At blocks.0.mlp.hook_post the ground-truth atoms are the single-frequency neurons; a
    dictionary made of exactly those neurons recovers them with MCC 1 and F1 1, far above a random
    dictionary."""
    from husai.analysis.recovery import hook_recovery as recovery
    from husai.sae.activations import model_activations

    run, metrics = grokked_run
    acts, info = model_activations(run, hook="blocks.0.mlp.hook_post", split="all")
    gt = ground_truth(acts, info["p"], "add", metrics["key_frequencies"], neurons=True)
    idx = [e["index"] for e in gt.neurons["neurons"]]
    atoms = torch.eye(acts.shape[1], dtype=torch.float64)[idx]
    r = recovery(atoms, torch.ones(len(idx), dtype=torch.bool), gt, neuron_atoms=atoms)
    neurons = r["atoms"]["neurons"]
    assert neurons["mcc"] == pytest.approx(1.0) and neurons["f1"] == pytest.approx(1.0)
    assert neurons["random_reference"]["mcc"] < 0.8
    assert sum(gt.neurons["clusters"].values()) == len(idx) == gt.neurons["count"]
