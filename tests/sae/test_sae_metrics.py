"""Every SAE metric on a case computed by hand (identity SAE, zero SAE, tiny hand-built SAEs)."""

from __future__ import annotations

import math

import pytest
import torch

from husai.model.checkpoint import load_model
from husai.model.data import make_dataset
from husai.sae.activations import at_eq, extract, splice_at_eq
from husai.sae.architectures import ReLUSAE
from husai.sae.metrics import (
    _recovered,
    cosine_to_init,
    explained_variance,
    reconstruction_metrics,
    spliced_metrics,
)

from sae_fixtures import tiny_model_dir

torch.set_num_threads(1)


def identity_sae(d: int) -> ReLUSAE:
    """x_hat = ReLU(x) - ReLU(-x) = x: W_enc = [I, -I], W_dec = [I; -I], biases 0."""
    sae = ReLUSAE(1, d, 2 * d, l1_coeff=0.0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc[0] = torch.cat([eye, -eye], 1)
        sae.W_dec[0] = torch.cat([eye, -eye], 0)
    return sae


def zero_sae(d: int, mean: torch.Tensor) -> ReLUSAE:
    """W_dec = 0, b_dec = mean(x): always predicts the mean."""
    sae = ReLUSAE(1, d, 4, l1_coeff=0.0)
    with torch.no_grad():
        sae.b_dec[0] = mean
    return sae


@pytest.fixture(scope="module")
def model_data():
    model, cfg = load_model(tiny_model_dir())
    data = make_dataset(cfg["p"], cfg["train_frac"], cfg["split_seed"])
    return model, data


def test_explained_variance_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0); total variance sum 2
    assert explained_variance(x, torch.tensor([[1.0, 0.0], [2.5, 0.0]])).item() == pytest.approx(
        1 - 0.25 / 2
    )
    assert explained_variance(x, torch.tensor([[2.0, 0.0], [2.0, 0.0]])).item() == pytest.approx(
        0.0
    )
    # the uncentred 1 - ||x - x_hat||^2 / ||x||^2 would give 1 - 2/10 = 0.8 here; EV is 0
    assert explained_variance(x, torch.tensor([[1.0, 1.0], [2.0, 0.0]])).item() == pytest.approx(
        0.0
    )


def test_identity_and_zero_sae_reconstruction():
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(0)) + 3
    m = reconstruction_metrics(identity_sae(5), x)
    assert m["explained_variance"][0] == pytest.approx(1.0, abs=1e-9)
    assert m["mse"][0] == pytest.approx(0.0, abs=1e-12)
    z = reconstruction_metrics(zero_sae(5, x.mean(0)), x)
    assert z["explained_variance"][0] == pytest.approx(0.0, abs=1e-6)
    assert z["mse"][0] == pytest.approx(((x - x.mean(0)) ** 2).mean().item(), rel=1e-5)
    assert z["l0"][0] == 0 and z["frac_dead"][0] == 1.0 and z["frac_dense"][0] == 0.0


def test_l0_dead_dense_by_hand():
    """Latent 0 fires on all 10 inputs (dense), latent 1 on exactly 1 of 10 (10%: not > 10%,
    not dense), latent 2 never (dead). L0 = 11/10."""
    sae = ReLUSAE(1, 2, 3, l1_coeff=0.0)
    with torch.no_grad():
        sae.W_enc[0] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    x = torch.tensor([[1.0, 1.0]] + [[1.0, 0.0]] * 9)
    m = reconstruction_metrics(sae, x)
    assert m["l0"][0] == pytest.approx(1.1)
    assert m["frac_dead"][0] == pytest.approx(1 / 3)
    assert m["frac_dense"][0] == pytest.approx(1 / 3)


def test_cosine_to_init_by_hand():
    init = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    now = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])  # cos 1 and 1/sqrt(2)
    assert cosine_to_init(now, init)[0] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def test_ce_loss_recovered_formula():
    assert _recovered(ablate=3.0, sae=2.0, clean=1.0) == 0.5
    assert _recovered(ablate=3.0, sae=1.0, clean=1.0) == 1.0
    assert (
        _recovered(ablate=1.0, sae=1.0, clean=1.0) is None
    )  # nothing to recover: missing, not NaN or 1


def test_explained_variance_of_constant_data_is_missing_not_perfect():
    x = torch.ones(10, 3)
    assert torch.isnan(explained_variance(x, x.expand(2, 10, 3))).all()  # 0/0
    y = torch.arange(30.0).reshape(10, 3)
    assert explained_variance(y, y.expand(2, 10, 3)).tolist() == [1.0, 1.0]


def test_spliced_identity_and_mean_sae(model_data):
    model, data = model_data
    hook = "blocks.0.hook_resid_post"
    x = extract(model, hook, data.tokens)
    out, base = spliced_metrics(identity_sae(x.shape[1]), model, hook, data.tokens, data.labels, x)
    assert out["ce_loss_recovered_zero"][0] == pytest.approx(1.0, abs=1e-4)
    assert out["ce_loss_recovered_mean"][0] == pytest.approx(1.0, abs=1e-4)
    assert out["delta_ce"][0] == pytest.approx(0.0, abs=1e-4)
    assert out["spliced_acc"][0] == base["clean_acc"]
    with torch.no_grad():  # clean CE computed independently
        clean = torch.nn.functional.cross_entropy(model(data.tokens).double(), data.labels).item()
    assert base["clean_ce"] == pytest.approx(clean, rel=1e-9)
    mean_out, _ = spliced_metrics(
        zero_sae(x.shape[1], x.mean(0)), model, hook, data.tokens, data.labels, x
    )
    assert mean_out["spliced_ce"][0] == pytest.approx(base["mean_ablation_ce"], rel=1e-5)
    assert mean_out["ce_loss_recovered_mean"][0] == pytest.approx(0.0, abs=1e-4)
    assert base["zero_ablation_ce"] > base["clean_ce"]


def test_splice_and_at_eq_touch_only_the_eq_position():
    act = torch.arange(2 * 3 * 4.0).view(2, 3, 4)  # [B, pos, d]
    new = -torch.ones(2, 4)
    out = splice_at_eq("blocks.0.hook_resid_pre", new)(act)
    assert torch.equal(out[:, :2], act[:, :2]) and torch.equal(out[:, 2], new)
    assert torch.equal(at_eq("blocks.0.hook_resid_pre", act), act[:, 2])
    pat = torch.arange(2 * 2 * 3 * 3.0).view(2, 2, 3, 3)  # [B, H, Q, P]
    assert torch.equal(at_eq("blocks.0.attn.hook_pattern", pat), pat[:, :, 2].reshape(2, 6))
    out = splice_at_eq("blocks.0.attn.hook_pattern", torch.zeros(2, 6))(pat)
    assert torch.equal(out[:, :, :2], pat[:, :, :2]) and out[:, :, 2].abs().sum() == 0


def test_spliced_at_resid_pre_with_last_only(model_data):
    """resid_pre keeps all 3 positions under last_only; identity splicing leaves CE unchanged,
    zero SAE at `=` equals mean ablation computed by hand."""
    model, data = model_data
    hook = "blocks.0.hook_resid_pre"
    x = extract(model, hook, data.tokens)
    out, base = spliced_metrics(identity_sae(x.shape[1]), model, hook, data.tokens, data.labels, x)
    assert out["delta_ce"][0] == pytest.approx(0.0, abs=1e-4)
    mean = x.mean(0)

    def ablate(a):
        a = a.clone()
        a[:, -1] = mean
        return a

    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(
            model.run_with_hooks(data.tokens, [(hook, ablate)]).double(), data.labels
        )
    assert base["mean_ablation_ce"] == pytest.approx(ref.item(), rel=1e-9)


def test_tiny_model_learns_train_set():
    from husai.model.checkpoint import load_model

    model, cfg = load_model(tiny_model_dir())  # the fixture every SAE test here trains on
    data = make_dataset(cfg["p"], cfg["train_frac"], cfg["split_seed"])
    with torch.no_grad():
        acc = (
            (model(data.tokens[data.train_idx]).argmax(-1) == data.labels[data.train_idx])
            .float()
            .mean()
        )
    assert acc > 0.9
