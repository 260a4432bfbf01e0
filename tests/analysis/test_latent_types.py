"""What each latent is (husai.analysis.latent_types), on planted latents whose type is known by
construction: exact plane features, answer detectors, input features, patches, and noise."""

from __future__ import annotations

import math

import pytest
import torch

from husai.analysis.ground_truth import class_centroids, on_grid
from husai.analysis.latent_types import PATCH_RATE, latent_types

from planted import D, P, grid_values, planted_hook, wave


@pytest.fixture(scope="module")
def model():
    return planted_hook()


def test_each_planted_latent_gets_its_type(model):
    X, dirs, gt = model
    a, b, c = grid_values()
    centroids = class_centroids(on_grid(X, gt.grid), gt.grid)
    latents = [  # (activation over the grid, decoder row, expected type)
        (
            torch.relu(wave(c, 3, 0.3)),
            dirs[4] * math.cos(0.3) + dirs[5] * math.sin(0.3),
            "plane feature",
        ),
        ((c == 7).double(), centroids[7], "answer detector"),
        (torch.relu(wave(a, 5)) + torch.relu(wave(b, 5)), dirs[10], "input feature"),
        (((a < 2) & (b < 2)).double(), dirs[0] + dirs[6] + dirs[10], "patch"),
        (
            torch.relu(
                torch.randn(P * P, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            ),
            torch.randn(D, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
            "other",
        ),
        # a one-answer detector whose decoder happens to lie in output plane 3: not smooth on that
        # circle, so not a plane feature, and not near a centroid either
        ((c == 3).double(), dirs[4], "other"),
        (torch.zeros(P * P, dtype=torch.float64), dirs[1], None),  # dead: left out
    ]
    Z = torch.stack([z for z, _, _ in latents], 1)
    W = torch.stack([w for _, w, _ in latents])
    r = latent_types(Z, W, gt)
    assert r["n_live"] == 6
    assert [lat["type"] for lat in r["latents"]] == [t for _, _, t in latents if t]
    plane, detector, inputs, patch, _, rough = r["latents"]
    assert (
        plane["on_circle"] > 0.95
        and rough["in_output"]["3"] == pytest.approx(1.0)
        and rough["on_circle"] < 0.5
    )
    assert plane["answer_share"] == pytest.approx(1.0) and plane["in_output"]["3"] == pytest.approx(
        1.0
    )
    assert plane["off_span"] == pytest.approx(0.0, abs=1e-12)
    assert detector["centroid_cos"] == pytest.approx(1.0) and detector[
        "answer_share"
    ] == pytest.approx(1.0)
    assert max(detector["in_output"].values()) < 0.5  # a centroid mixes every output plane
    assert inputs["inputs_share"] == pytest.approx(1.0) and inputs["in_input"][
        "5"
    ] == pytest.approx(1.0)
    assert patch["firing_rate"] == pytest.approx(4 / P**2) and patch["firing_rate"] < PATCH_RATE
    assert r["counts"] == {
        "plane feature": 1,
        "answer detector": 1,
        "input feature": 1,
        "patch": 1,
        "other": 2,
    }
    assert r["examples"]["patch"] == [3]


def test_a_random_dictionary_meets_the_rules_only_at_their_chance_rate(model):
    """Random decoders whose latents are ReLUs of random projections of the activations (mostly
    functions of the answer, since the answer dominates the planted hook) become plane features only
    when their in-span direction happens to fall > 1/2 into one of the 3 two-dimensional output
    planes of the 12-d span: P = 3 * P(Beta(1, 5) > 1/2) = 3/32 at most."""
    X, _, gt = model
    counts = []
    for seed in range(3, 8):
        W = torch.randn(200, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        r = latent_types(torch.relu((X - X.mean(0)) @ W.T), W, gt)
        counts.append(r["counts"]["plane feature"])
        assert r["counts"]["input feature"] == 0 and r["counts"]["answer detector"] <= 5
        # a random direction puts half of its norm off the 12-d span (D = 24), and of its in-span
        # part 6/12 in the output planes
        assert r["mean"]["off_span"] == pytest.approx(0.5, abs=0.05)
        assert r["mean"]["in_output_planes"] == pytest.approx(0.5, abs=0.05)
    assert sum(counts) / (5 * 200) <= 3 / 32 + 0.02


def test_an_sae_with_no_live_latent_is_typed_as_empty(model):
    X, dirs, gt = model
    r = latent_types(torch.zeros(P * P, 4, dtype=torch.float64), dirs[:4], gt)
    assert r["n_live"] == 0 and sum(r["counts"].values()) == 0 and r["latents"] == []
