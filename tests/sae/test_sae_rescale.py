"""decoder_norm rescale (SAELens's rescale_acts_by_decoder_norm) for the TopK family: the dense
formula by hand, folding to unit rows, and what training does with it. The sparse path's gradients
against the dense formula are in test_sae_arch.py (test_sparse_training_path_equals_dense_reference,
rescale)."""

from __future__ import annotations

import pytest
import torch
from test_sae_arch import _free_norms, _random_sae

from husai.sae.architectures import MatryoshkaSAE, TopKSAE


def test_rescaled_dense_formula_by_hand():
    """decoder_norm rescale (SAELens's rescale_acts_by_decoder_norm):
    pre = ((x - b_dec) W_enc + b_enc) * n, x_hat = b_dec + z (W_dec / n), n the decoder rows' norms;
    written out here per seed with plain ops."""
    sae = _free_norms(_random_sae(TopKSAE, S=2, d_sae=8, k=3, rescale=True))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for s in range(2):
            n = torch.linalg.vector_norm(sae.W_dec[s], dim=1)  # [d_sae]
            pre = ((x - sae.b_dec[s]) @ sae.W_enc_T[s].T + sae.b_enc[s]) * n
            top = pre.topk(3, dim=1)
            z = torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp_min(0))
            x_hat = sae.b_dec[s] + z @ (sae.W_dec[s] / n[:, None])
            torch.testing.assert_close(sae.pre_acts(x)[s], pre)
            torch.testing.assert_close(sae(x)[s], x_hat)
            assert not torch.allclose(
                n, torch.ones_like(n)
            )  # the rows are not unit: the factor matters


def test_fold_decoder_norms_keeps_the_function_with_unit_rows():
    """Folding (what training does at its end) gives unit decoder rows and the same codes and
    reconstructions; the folded SAE equals one built without rescale from the folded weights."""
    sae = _free_norms(_random_sae(MatryoshkaSAE, d_sae=12, k=2, widths=[4, 12], rescale=True))
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(2)) + 1
    with torch.no_grad():
        sae.threshold.fill_(0.05)
        sae.train()
        z0, x0 = sae.encode(x), sae(x)
        sae.fold_decoder_norms()
        torch.testing.assert_close(torch.linalg.vector_norm(sae.W_dec, dim=-1), torch.ones(3, 12))
        assert not sae.rescale and sae.unit_norm_decoder
        torch.testing.assert_close(sae.encode(x), z0)
        torch.testing.assert_close(sae(x), x0)
        plain = MatryoshkaSAE(3, 6, 12, k=2, widths=[4, 12])
        plain.load_state_dict(sae.state_dict())
        torch.testing.assert_close(plain.encode(x), z0)


def test_rescale_training_ends_with_unit_rows_and_leaves_the_norm_free_meanwhile(monkeypatch):
    """train_saes with decoder_norm rescale: the rows' norms move during training (no
    renormalisation, no parallel-gradient removal) and the returned SAE is folded to unit rows;
    rescale is refused for architectures that keep their own decoder."""
    from husai.errors import HusaiError
    from husai.sae.config import SAETrainConfig
    from husai.sae.train import train_saes

    acts = torch.randn(256, 8, generator=torch.Generator().manual_seed(3)) * torch.linspace(
        3, 0.5, 8
    )
    cfg = SAETrainConfig(
        architecture="topk",
        latents=32,
        k=4,
        epochs=2,
        batch_size=64,
        decoder_norm="rescale",
        init="random",
        trajectory_epochs=[1],
    ).validate(8)
    before_fold = []
    fold = TopKSAE.fold_decoder_norms
    monkeypatch.setattr(
        TopKSAE,
        "fold_decoder_norms",
        lambda self: (before_fold.append(self.decoder_norms().detach().clone()), fold(self)),
    )
    res = train_saes(acts, cfg, [0, 1])
    (norms,) = before_fold
    assert (norms - 1).abs().max() > 0.01  # free during training (init: unit rows)
    torch.testing.assert_close(torch.linalg.vector_norm(res.sae.W_dec, dim=-1), torch.ones(2, 32))
    torch.testing.assert_close(
        torch.linalg.vector_norm(res.trajectory[1]["W_dec"], dim=-1), torch.ones(2, 32)
    )
    assert not res.sae.rescale
    torch.testing.assert_close(
        torch.linalg.vector_norm(res.W_dec_init, dim=-1), torch.ones(2, 32)
    )  # cosine_to_init's
    # the same run with unit rows trains to a different SAE: the norms were free
    unit = train_saes(
        acts, SAETrainConfig(**{**cfg.to_dict(), "decoder_norm": "unit"}).validate(8), [0, 1]
    )
    assert not torch.allclose(unit.sae.W_dec, res.sae.W_dec, atol=1e-3)
    with pytest.raises(HusaiError, match="decoder_norm"):
        SAETrainConfig(architecture="relu", decoder_norm="rescale").validate(8)
    with pytest.raises(HusaiError, match="decoder_norm"):
        SAETrainConfig(decoder_norm="free").validate(8)
    with pytest.raises(HusaiError, match="decoder_init_norm"):
        SAETrainConfig(decoder_init_norm=0.1).validate(8)  # unit rows start at 1


def test_decoder_init_norm_scales_both_rows_at_init():
    """decoder_init_norm c (decoder_norm rescale): training starts from the unit-norm init times c,
    decoder and encoder alike, the same directions as with c = 1; init_saes (the untrained null of
    `husai compare`) hands that SAE out folded to unit rows, the same function."""
    from husai.sae.config import SAETrainConfig
    from husai.sae.train import _init, init_saes

    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(architecture="topk", latents=16, k=2, decoder_norm="rescale", init="random")
    one = _init(acts, SAETrainConfig(**kw).validate(8), [5], "cpu")[0]
    cfg = SAETrainConfig(**kw, decoder_init_norm=0.1).validate(8)
    small = _init(acts, cfg, [5], "cpu")[0]
    torch.testing.assert_close(small.W_dec, 0.1 * one.W_dec)
    torch.testing.assert_close(small.W_enc_T, 0.1 * one.W_enc_T)
    torch.testing.assert_close(
        torch.linalg.vector_norm(small.W_dec, dim=-1), torch.full((1, 16), 0.1)
    )
    null = init_saes(acts, cfg, [5])
    torch.testing.assert_close(torch.linalg.vector_norm(null.W_dec, dim=-1), torch.ones(1, 16))
    with torch.no_grad():
        torch.testing.assert_close(null(acts), small(acts))


def test_b_dec_init_zeros_starts_b_dec_at_zero_and_keeps_data_init_rows_centred_on_the_median():
    """b_dec_init zeros (SAELens 6's): b_dec starts at 0 for every seed, in training and in
    init_saes (the untrained null of `husai compare`); data init draws the same rows as with the
    median, since they are centred on the median either way; the median is the default."""
    from husai.errors import HusaiError
    from husai.sae.base import geometric_median
    from husai.sae.config import SAETrainConfig
    from husai.sae.train import _init, init_saes

    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(3)) + 5.0  # far from 0
    kw = dict(architecture="topk", latents=16, k=2, init="data")
    median = _init(acts, SAETrainConfig(**kw).validate(8), [5, 6], "cpu")[0]
    zeros = _init(acts, SAETrainConfig(**kw, b_dec_init="zeros").validate(8), [5, 6], "cpu")[0]
    torch.testing.assert_close(median.b_dec, geometric_median(acts).expand(2, -1))
    assert median.b_dec.abs().min() > 1.0
    torch.testing.assert_close(zeros.b_dec, torch.zeros(2, 8))
    torch.testing.assert_close(zeros.W_dec, median.W_dec)
    torch.testing.assert_close(zeros.W_enc_T, median.W_enc_T)
    null = init_saes(
        acts,
        SAETrainConfig(**kw, b_dec_init="zeros").validate(8),
        [5],
        b_dec=geometric_median(acts),
    )
    torch.testing.assert_close(null.b_dec, torch.zeros(1, 8))
    with pytest.raises(HusaiError, match="b_dec_init"):
        SAETrainConfig(b_dec_init="mean").validate(8)
