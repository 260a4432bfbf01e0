"""The browser's logit effects, activation densities and nearest oracle atoms (husai.browse.effects)
against references computed here: numpy's FFT and histogram, brute-force cosines, the model's own
forward pass, and the oracle reading's tiling rule."""

import math

import numpy as np
import pytest
import torch

from husai.browse.effects import (
    DENSITY_BINS,
    EFFECT_LEVELS,
    density,
    effect_stats,
    kind_name,
    nearest_atoms,
    pack_effects,
)


def test_effect_stats_finds_the_one_frequency_and_its_share():
    p = 113
    c = np.arange(p)
    pure = 3 * np.cos(2 * np.pi * 5 * c / p + 0.3) + 0.7  # a cosine of k = 5 plus a constant
    mix = 2 * np.cos(2 * np.pi * 5 * c / p) + np.sin(2 * np.pi * 9 * c / p)  # power 4 : 1
    rng = np.random.default_rng(0)
    noise = rng.normal(size=p)
    E = torch.tensor(np.stack([pure, mix, np.full(p, 2.0), noise]))
    freq, share = effect_stats(E)
    assert freq[:3] == [5, 5, 0] and share[0] == pytest.approx(1.0, abs=1e-4)
    assert share[1] == pytest.approx(0.8, abs=1e-4) and share[2] == 0.0
    # the noise against numpy: power of f and -f over the centred variance
    P = np.abs(np.fft.fft(noise - noise.mean())) ** 2
    both = P[1 : p // 2 + 1] + P[p - 1 : p - p // 2 - 1 : -1]
    assert freq[3] == int(np.argmax(both)) + 1
    assert share[3] == pytest.approx(both.max() / P.sum(), abs=1e-4)


def test_pack_effects_round_trip_within_half_a_level():
    g = torch.Generator().manual_seed(1)
    E = torch.randn(7, 31, generator=g, dtype=torch.float64)
    E[3] = 0.0
    raw, scale = pack_effects(E)
    q = np.frombuffer(raw, np.uint8).reshape(7, 31).astype(float)
    back = (q - 128) * np.array(scale)[:, None] / EFFECT_LEVELS
    assert (np.abs(back - E.numpy()) <= np.array(scale)[:, None] / (2 * EFFECT_LEVELS) + 1e-6).all()
    assert scale[3] == 0 and (back[3] == 0).all()
    assert np.allclose(np.abs(back).max(1), E.abs().max(1).values.numpy(), rtol=1e-5)


def test_density_is_numpys_histogram_of_log_activations():
    rng = np.random.default_rng(2)
    z = np.maximum(rng.normal(size=(500, 4)), 0) ** 3
    z[:, 2] = 0.0
    z[:, 3] = 0.0
    z[7, 3] = 0.5  # one firing value: all in the first bin
    d = density(z)
    v = np.log10(z[:, 0][z[:, 0] > 0])
    ref, _ = np.histogram(v, bins=DENSITY_BINS, range=(v.min(), v.max()))
    assert d["counts"][0] == ref.tolist() and sum(d["counts"][0]) == (z[:, 0] > 0).sum()
    assert d["lo"][0] == pytest.approx(v.min(), abs=1e-5) and d["hi"][0] == pytest.approx(v.max())
    assert d["counts"][2] == [0] * DENSITY_BINS and d["lo"][2] is None
    assert d["counts"][3] == [1] + [0] * (DENSITY_BINS - 1)


def test_nearest_atoms_by_brute_force():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(9, 6, generator=g, dtype=torch.float64) * 3
    atoms = torch.randn(12, 6, generator=g, dtype=torch.float64)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    labels = [
        dict(circle=f"{n} {k}", phase=j * 0.5, radius=1.0, spacing=0.5)
        for j, (n, k) in enumerate([("out", 3), ("in", 3), ("conj", 7)] * 4)
    ]
    near = nearest_atoms(W, atoms, labels, "add")
    for i, w in enumerate(W):
        cos = [float(w @ a / w.norm()) for a in atoms]
        j = int(np.argmax(cos))
        assert near["atom"][i] == j and near["cos"][i] == pytest.approx(cos[j], abs=1e-4)
        assert near["circle"][i] == labels[j]["circle"]
        assert near["freq"][i] == int(labels[j]["circle"].split()[1])
        assert near["phase"][i] == pytest.approx(math.degrees(labels[j]["phase"]) % 360, abs=0.1)
    assert [kind_name(f"{n} 3", "add") for n in ("out", "in", "in-a", "conj")] == [
        "output",
        "input",
        "input a",
        "(a-b)",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"])
def test_logit_map_is_the_models_own_response_to_a_decoder_row(finished_study, hook):
    """The direct effect is the whole effect in this model (no LayerNorm, one block): adding a
    direction at the hook's `=` position moves the logits by exactly direction @ logit_map, and the
    map is W_U (resid_post) or W_out W_U (mlp.hook_post) read from the safetensors file."""
    from safetensors.torch import load_file

    from husai.browse.effects import logit_map
    from husai.model.checkpoint import load_model
    from husai.model.data import make_tokens

    _, out, _, _ = finished_study
    mdir = out / "models" / "seed0"
    M = logit_map(mdir, hook)
    w = load_file(str(mdir / "model.safetensors"))
    ref = w["unembed.W_U"].double()
    if "mlp" in hook:
        ref = w["blocks.0.mlp.W_out"].double() @ ref
    torch.testing.assert_close(M, ref)
    model, cfg = load_model(mdir)
    tokens = make_tokens(cfg["p"])[:50]
    g = torch.Generator().manual_seed(4)
    v = torch.randn(M.shape[0], generator=g)

    def add(x):
        x = x.clone()
        x[:, -1] += v
        return x

    with torch.no_grad():
        base = model(tokens)
        moved = model.run_with_hooks(tokens, [(hook, add)])
    torch.testing.assert_close(
        (moved - base).double(), (v.double() @ M).expand(50, -1), atol=2e-4, rtol=1e-4
    )
