"""SAE architectures: activations, losses and gradients against hand-computed cases and a slow
per-seed reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from husai.sae.architectures import BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, ReLUSAE, TopKSAE
from husai.sae.base import geometric_median
from husai.sae.sparse import topk_rows

torch.set_num_threads(1)


def _random_sae(cls, S=3, d_in=6, d_sae=12, **kw):
    sae = cls(S, d_in, d_sae, **kw).init_weights(
        list(range(S)), torch.randn(d_in, generator=torch.Generator().manual_seed(9))
    )
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        sae.b_enc.copy_(0.1 * torch.randn(sae.b_enc.shape, generator=g))
    return sae


def test_topk_is_relu_of_topk():
    sae = TopKSAE(1, 2, 4, k=2)
    pre = torch.tensor([[[3.0, -1.0, 2.0, 0.5], [-1.0, -2.0, -3.0, -4.0], [0.2, 5.0, -1.0, 0.1]]])
    z = sae.activate(pre)
    expected = torch.tensor([[[3.0, 0, 2.0, 0], [0, 0, 0, 0], [0.2, 5.0, 0, 0]]])
    assert torch.equal(z, expected)


@pytest.mark.parametrize(
    "cls,kw",
    [
        (TopKSAE, dict(k=3)),
        (ReLUSAE, dict(l1_coeff=0.1)),
        (JumpReLUSAE, dict(l0_coeff=0.1)),
        (BatchTopKSAE, dict(k=3)),
        (MatryoshkaSAE, dict(k=3, widths=[4, 12])),
    ],
)
def test_stacked_encode_decode_match_per_seed_reference(cls, kw):
    """Each seed slot computes exactly the 2-D SAE formula with its own parameters."""
    sae = _random_sae(cls, **kw)
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    z = sae.encode(x)
    x_hat = sae.decode(z)
    for s in range(sae.n_seeds):
        pre = (x - sae.b_dec[s]) @ sae.W_enc[s] + sae.b_enc[s]
        if cls is TopKSAE:
            v, i = pre.topk(3, dim=-1)
            ref = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
        elif cls is ReLUSAE:
            ref = F.relu(pre)
        elif cls is JumpReLUSAE:
            ref = pre * (pre > sae.threshold[s])
        else:
            ref = F.relu(pre) * (pre > sae.threshold[s])
        torch.testing.assert_close(z[s], ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            x_hat[s], ref @ sae.W_dec[s] + sae.b_dec[s], rtol=1e-5, atol=1e-6
        )
        one = sae.select(s)
        torch.testing.assert_close(one.encode(x)[0], z[s])


def test_init_tied_unit_norm_and_independent_of_other_seeds():
    a = TopKSAE(3, 5, 20, k=2).init_weights([7, 8, 9], torch.ones(5))
    b = TopKSAE(1, 5, 20, k=2).init_weights([8], torch.ones(5))
    torch.testing.assert_close(a.W_dec.norm(dim=-1), torch.ones(3, 20))
    assert torch.equal(a.W_enc, a.W_dec.transpose(1, 2))
    assert torch.equal(a.W_dec[1], b.W_dec[0])
    assert torch.equal(a.b_dec, torch.ones(3, 5))
    assert not torch.equal(a.W_dec[0], a.W_dec[1])


def test_relu_loss_is_mse_plus_decoder_weighted_l1():
    sae = _random_sae(ReLUSAE, l1_coeff=0.25)
    with torch.no_grad():
        sae.W_dec.mul_(
            torch.rand(sae.W_dec.shape[:2], generator=torch.Generator().manual_seed(2)).unsqueeze(
                -1
            )
            + 0.5
        )
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    total, stats = sae.training_loss(x, torch.zeros(3, 12, dtype=torch.bool))
    for s in range(3):
        z = F.relu((x - sae.b_dec[s]) @ sae.W_enc[s] + sae.b_enc[s])
        x_hat = z @ sae.W_dec[s] + sae.b_dec[s]
        ref = ((x_hat - x) ** 2).sum(1).mean() + 0.25 * (z * sae.W_dec[s].norm(dim=1)).sum(1).mean()
        torch.testing.assert_close(stats["loss"][s], ref.detach())
    torch.testing.assert_close(total.detach(), stats["loss"].sum())


def test_auxk_reconstructs_residual_from_dead_latents_only():
    sae = _random_sae(TopKSAE, k=2, k_aux=3, aux_coeff=1.0)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(4))
    dead = torch.zeros(3, 12, dtype=torch.bool)
    var = (
        ((x - x.mean(0)) ** 2).sum(1).mean()
    )  # TopK's reconstruction term is the FVU (Gao et al. 2.1)
    _, none_dead = sae.training_loss(x, dead)
    torch.testing.assert_close(
        none_dead["loss"], none_dead["mse"] / var
    )  # no dead latent -> no aux loss
    dead[0, :6] = True  # seed 0: latents 0-5 dead; seeds 1, 2: none
    _, stats = sae.training_loss(x, dead)
    torch.testing.assert_close(stats["loss"][1:], stats["mse"][1:] / var)
    pre = (x - sae.b_dec[0]) @ sae.W_enc[0] + sae.b_enc[0]
    v, i = pre.topk(2, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
    e = x - (z @ sae.W_dec[0] + sae.b_dec[0])
    pd = pre[:, :6]
    va, ia = pd.topk(3, dim=-1)
    za = torch.zeros_like(pd).scatter(-1, ia, F.relu(va))
    e_hat = za @ sae.W_dec[0, :6]
    aux = ((e_hat - e) ** 2).sum(1).mean() / ((e - e.mean(0)) ** 2).sum(1).mean()
    torch.testing.assert_close(
        stats["loss"][0] - stats["mse"][0] / var, aux.detach(), rtol=1e-4, atol=1e-6
    )


def test_parallel_gradient_removed_and_rows_renormalised():
    sae = _random_sae(TopKSAE, k=2)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(4))
    loss, stats = sae.training_loss(x, torch.zeros(3, 12, dtype=torch.bool))
    loss.backward()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() > 1e-4  # there was a parallel part
    sae.remove_parallel_grads()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_step(stats)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(3, 12))


def test_batchtopk_keeps_k_per_input_on_average_and_tracks_threshold():
    sae = BatchTopKSAE(2, 4, 8, k=2, threshold_lr=0.5)
    pre = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)) + 1.0
    z = sae.activate(pre, training=True)
    for s in range(2):
        kept = z[s] > 0
        assert kept.sum() == 10  # k * B, all of them positive here
        assert pre[s][kept].min() >= pre[s][~kept].max()  # the largest across the whole batch
    mins = torch.stack([z[s][z[s] > 0].min() for s in range(2)])
    sae.after_step({"min_active": mins})
    torch.testing.assert_close(sae.threshold, mins)  # the EMA starts at the first batch's value
    sae.after_step({"min_active": torch.tensor([3.0, float("inf")])})  # seed 1: nothing kept
    torch.testing.assert_close(
        sae.threshold, torch.stack([0.5 * mins[0] + 1.5, mins[1]])
    )  # rate 0.5
    zi = sae.activate(pre, training=False)
    assert torch.equal(zi, F.relu(pre) * (pre > sae.threshold.view(2, 1, 1)))


def test_jumprelu_pseudo_derivatives_by_hand():
    """Rajamanoharan et al. 2024 eq. 11-12 with eps = 0.1, theta = 1: pre 1.02 lies inside the
    kernel window (|pre - theta| < eps/2), pre 0.5 and 1.5 outside. The parameter is log theta,
    so its gradient is theta * d/d theta, equal to d/d theta at theta = 1."""
    sae = JumpReLUSAE(1, 1, 3, l0_coeff=1.0, bandwidth=0.1, init_threshold=1.0)
    pre = torch.tensor([[[1.02, 0.5, 1.5]]], requires_grad=True)
    z = sae.activate(pre, training=True)
    assert torch.equal(z.detach(), torch.tensor([[[1.02, 0.0, 1.5]]]))
    z.sum().backward()
    torch.testing.assert_close(
        sae.log_threshold.grad, torch.tensor([[-10.0, 0.0, 0.0]])
    )  # -(theta/eps) K
    torch.testing.assert_close(pre.grad, torch.tensor([[[1.0, 0.0, 1.0]]]))  # straight through H
    sae.log_threshold.grad = None
    pre2 = pre.detach().requires_grad_(True)
    l0 = sae.sparsity_loss(None, pre2, None, None, None)
    assert l0.item() == 2.0
    l0.sum().backward()
    torch.testing.assert_close(
        sae.log_threshold.grad, torch.tensor([[-10.0, 0.0, 0.0]])
    )  # -(1/eps) K
    assert pre2.grad is None or pre2.grad.abs().sum() == 0


def test_geometric_median_minimises_sum_of_distances():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(50, 3, generator=g), 100 + torch.randn(5, 3, generator=g)]
    )  # outliers
    m = geometric_median(x).double().numpy()
    xn = x.double().numpy()
    f = lambda v: np.linalg.norm(xn - v, axis=1).sum()  # noqa: E731
    ref = minimize(
        f, xn.mean(0), method="Nelder-Mead", options=dict(xatol=1e-8, fatol=1e-10, maxiter=20000)
    ).x
    assert f(m) <= f(ref) + 1e-4
    assert np.linalg.norm(m - ref) < 1e-2
    assert np.linalg.norm(m) < 2  # the mean would be pulled to ~9 by the outliers


def _free_norms(sae, seed: int = 6):
    """Decoder rows scaled to norms in [0.3, 2] (the free norms of decoder_norm rescale)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        sae.W_dec.mul_(0.3 + 1.7 * torch.rand(*sae.W_dec.shape[:2], 1, generator=g))
    return sae


@pytest.mark.parametrize("rescale", [False, True], ids=["unit", "rescale"])
@pytest.mark.parametrize(
    "per_seed", [False, True], ids=["shared_x", "per_seed_x"]
)  # x [B, d_in] or [S, B, d_in]
@pytest.mark.parametrize(
    "d_sae", [12, 64]
)  # 64: the grouped top-k path of topk_rows (12 falls back to torch.topk)
@pytest.mark.parametrize(
    "n_dead", [0, 6, 10]
)  # none: no AuxK; few: search dead columns only; many: masked top-k
@pytest.mark.parametrize(
    "cls,kw", [(TopKSAE, {}), (BatchTopKSAE, {}), (MatryoshkaSAE, dict(widths=[2, 5]))]
)
def test_sparse_training_path_equals_dense_reference(cls, kw, n_dead, d_sae, per_seed, rescale):
    """The TopK family trains through husai.sae.sparse on the active latents only; loss and every
    gradient must equal the dense formula (StackedSAE.training_loss: dense activate + decode), with
    one batch for all seeds and with a batch per seed, with unit decoder rows and with the free rows
    of decoder_norm rescale (whose dense formula test_rescaled_dense_formula_by_hand checks)."""
    from husai.sae.architectures import StackedSAE

    x = (
        torch.randn(*((3,) if per_seed else ()), 10, 6, generator=torch.Generator().manual_seed(4))
        + 1
    )
    dead = torch.zeros(3, d_sae, dtype=torch.bool)
    dead[0, :n_dead] = True
    dead[2, 3] = n_dead > 0
    kw = dict(kw, widths=kw["widths"] + [d_sae]) if "widths" in kw else kw
    fast, slow = (
        _random_sae(cls, d_sae=d_sae, k=2, k_aux=3, rescale=rescale, **kw) for _ in range(2)
    )
    if rescale:
        fast, slow = _free_norms(fast), _free_norms(slow)
    lf, sf = fast.training_loss(x, dead)
    ls, ss = StackedSAE.training_loss(slow, x, dead)
    lf.backward()
    ls.backward()
    torch.testing.assert_close(sf["loss"], ss["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sf["l0"], ss["l0"])
    assert torch.equal(sf["fired"], ss["fired"])
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "cls,kw",
    [
        (TopKSAE, dict(k=2, k_aux=3)),
        (BatchTopKSAE, dict(k=2, k_aux=3)),
        (MatryoshkaSAE, dict(k=2, k_aux=3, widths=[4, 12])),
        (ReLUSAE, dict(l1_coeff=0.1)),
        (JumpReLUSAE, dict(l0_coeff=0.1, bandwidth=0.5, init_threshold=0.1)),
    ],
)
def test_per_seed_batch_loss_equals_each_seed_alone(cls, kw):
    """x [S, B, d_in]: seed s's loss, stats and gradients are those of its slot trained alone on
    x[s] (its own batch variance included): no seed sees another seed's batch."""
    sae = _random_sae(cls, **kw)
    x = torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(6)) + 1
    dead = torch.zeros(3, 12, dtype=torch.bool)
    dead[1, :5] = True  # AuxK on one seed
    total, stats = sae.training_loss(x, dead)
    total.backward()
    for s in range(3):
        one = sae.select(s)
        loss, st = one.training_loss(x[s], dead[s : s + 1])
        loss.backward()
        for key in ("loss", "mse", "l0", "ev"):
            torch.testing.assert_close(
                stats[key][s : s + 1], st[key], rtol=1e-5, atol=1e-6, msg=f"{key} seed {s}"
            )
        for (name, p), q in zip(sae.named_parameters(), one.parameters()):
            torch.testing.assert_close(
                p.grad[s : s + 1], q.grad, rtol=1e-4, atol=1e-5, msg=f"{name} seed {s}"
            )


def test_data_span_basis_and_row_projection():
    """Q spans the fewest principal directions holding the share; project_rows maps rows into it."""
    from husai.sae.base import data_span_basis

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g) * torch.tensor([10.0, 3.0, 0.01])  # variances 100, 9, 1e-4
    x = x @ torch.linalg.qr(torch.randn(3, 3, generator=g)).Q
    assert data_span_basis(x, 0.5).shape == (3, 1) and data_span_basis(x, 0.999).shape == (3, 2)
    assert data_span_basis(x, 1.0) is None  # the whole space: nothing to project
    Q = data_span_basis(x, 0.999)
    sae = TopKSAE(2, 3, 5, k=1).init_weights([1, 2], torch.zeros(3))
    sae.project_rows(Q, renormalise=True)
    for W in (sae.W_dec, sae.W_enc_T):
        torch.testing.assert_close(W @ Q @ Q.T, W.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(2, 5))


def test_matryoshka_loss_is_a_sum_of_nested_fvus_by_hand():
    """Two levels, widths [2, 4], batch top-k over two inputs: the loss is FVU of the prefix
    reconstruction (latents 0-1 only) plus FVU of the full one, each computed here by hand."""
    sae = MatryoshkaSAE(1, 2, 4, k=2, widths=[2, 4])
    with torch.no_grad():
        sae.W_dec[0] = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]])
        sae.W_enc[0] = torch.tensor([[1.0, 0, 0.5, 0], [0, 1.0, 0, 0.5]])
    x = torch.tensor(
        [[2.0, 0.0], [0.0, 4.0]]
    )  # pre = [[2, 0, 1, 0], [0, 4, 0, 2]]: batch top-4 keeps 2, 1, 4, 2
    loss, stats = sae.training_loss(x, torch.zeros(1, 4, dtype=torch.bool))
    var = ((x - x.mean(0)) ** 2).sum(1).mean()  # 8
    inner = torch.tensor([[2.0, 0], [0, 4.0]])  # latents 0, 1 only
    full = torch.tensor([[3.0, 0], [0, 6.0]])  # plus latents 2, 3
    expected = ((inner - x) ** 2).sum(1).mean() / var + ((full - x) ** 2).sum(1).mean() / var
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["mse"], ((full - x) ** 2).sum(1).mean().reshape(1))


@pytest.mark.parametrize(
    "shape,k",
    [((3, 7, 2048), 32), ((2, 5, 1024), 64), ((2, 65536), 4096), ((4, 64), 4), ((4, 40), 3)],
)
def test_topk_rows_selects_the_same_set_as_torch_topk(shape, k):
    pre = torch.randn(shape, generator=torch.Generator().manual_seed(k))
    pre[..., :5] = pre[..., :5] + 3  # clustered large values: several winners in one group
    vals, idx = topk_rows(pre, k)
    ref_vals, ref_idx = pre.topk(k, dim=-1)
    assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    assert torch.equal(pre.gather(-1, idx), vals)


def test_pre_acts_buffer_reuse_matches_a_fresh_result():
    """Training steps write pre-activations into a reused buffer: results must equal the plain
    computation whatever came before (a longer batch, another dtype)."""
    sae = _random_sae(TopKSAE, d_sae=16, k=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, dtype in [
            (10, torch.float32),
            (4, torch.float32),
            (12, torch.float32),
            (5, torch.float64),
        ]:
            sae.to(dtype)
            x = torch.randn(n, 6, generator=g, dtype=dtype)
            torch.testing.assert_close(sae.pre_acts(x, reuse_buffer=True), sae.pre_acts(x))


def _relu_family_case(cls, dtype, d_sae, B, per_seed):
    """Two copies of a ReLU/JumpReLU SAE (S = 3) and a batch where the seeds' active counts differ
    widely: seed 0 fires often, seed 1 never (an empty entry list: all padding), seed 2 rarely.
    JumpReLU: random thresholds, plus latents 0-3 of seeds 0 and 2 with a zero encoder row, theta
    1 and bandwidth 0.5, so that pre = b_enc exactly: 0.75 and 1.25 (the kernel window's open
    edges: outside it), 1.0 (at theta: inactive, inside the window), 0.9 (below theta, inside)."""
    S, d_in = 3, 6
    kw = (
        dict(l1_coeff=0.3)
        if cls is ReLUSAE
        else dict(l0_coeff=0.3, bandwidth=0.5, init_threshold=0.4)
    )
    g = torch.Generator().manual_seed(d_sae + B)
    x = (torch.randn(*((S,) if per_seed else ()), B, d_in, generator=g) + 1).to(dtype)
    saes = []
    for _ in range(2):
        sae = _random_sae(cls, S=S, d_in=d_in, d_sae=d_sae, **kw).to(dtype)
        with torch.no_grad():
            sae.W_dec.mul_(
                torch.rand(S, d_sae, 1, generator=torch.Generator().manual_seed(2)).to(dtype) + 0.5
            )
            sae.b_enc.add_(torch.tensor([0.3, -100.0, -0.8], dtype=dtype).unsqueeze(1))
            if cls is JumpReLUSAE:
                sae.log_threshold.add_(
                    0.5
                    * torch.randn(S, d_sae, generator=torch.Generator().manual_seed(1)).to(dtype)
                )
                for s in (0, 2):
                    sae.W_enc_T[s, :4] = 0
                    sae.b_enc[s, :4] = torch.tensor([0.75, 1.25, 1.0, 0.9], dtype=dtype)
                    sae.log_threshold[s, :4] = 0.0
        saes.append(sae)
    return x, saes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_seed", [False, True], ids=["shared_x", "per_seed_x"])
@pytest.mark.parametrize("B", [10, 3])  # 3: a short last batch
@pytest.mark.parametrize("d_sae", [12, 64])
@pytest.mark.parametrize("cls", [ReLUSAE, JumpReLUSAE])
def test_relu_family_sparse_path_equals_dense_reference(cls, d_sae, B, per_seed, dtype):
    """ReLU and JumpReLU train on the entries above 0 / near theta only
    (husai.sae.relu.entries_above); loss, every stat and every gradient must equal
    StackedSAE.training_loss's, forced sparse (dense_above None) and forced through the dense
    fallback from the no-grad pass (0.0)."""
    from husai.sae.architectures import StackedSAE

    x, (ref, *_) = _relu_family_case(cls, dtype, d_sae, B, per_seed)
    dead = torch.zeros(3, d_sae, dtype=torch.bool)
    lr, sr = StackedSAE.training_loss(ref, x, dead)
    lr.backward()
    assert sr["l0"][1] == 0 and sr["l0"][0] > sr["l0"][2]  # padding exercised, one seed empty
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for dense_above in (None, 0.0):
        _, (sae, _) = _relu_family_case(cls, dtype, d_sae, B, per_seed)
        sae.dense_above = dense_above
        loss, st = sae.training_loss(x, dead)
        loss.backward()
        torch.testing.assert_close(loss, lr, **tol)
        for key in ("loss", "mse", "l0", "ev"):
            torch.testing.assert_close(st[key], sr[key], **tol, msg=f"{key} {dense_above}")
        assert torch.equal(st["fired"], sr["fired"])
        for (name, p), q in zip(sae.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **tol, msg=f"{name} {dense_above}")
    if (
        cls is JumpReLUSAE
    ):  # the window entries reached theta: -(theta/eps) dL/dz + -(1/eps) l0_coeff / B
        assert (ref.log_threshold.grad[0, 2:4] != 0).all() and (
            ref.log_threshold.grad[1] == 0
        ).all()


@pytest.mark.parametrize("per_seed", [False, True], ids=["shared_x", "per_seed_x"])
@pytest.mark.parametrize("d", [12, 64])
def test_entries_above_lists_exactly_the_entries_above(d, per_seed):
    """Per seed: the (row, col, value) of every entry above the threshold (a number or one per
    latent), rows sorted, then padding (row B - 1, col 0, value 0); pre in the [B, S, d]-in-memory
    layout that pre_acts gives a shared batch is read without a copy. None above dense_above."""
    from husai.sae.sparse import entries_above

    S, B = 3, 7
    g = torch.Generator().manual_seed(d)
    pre = torch.randn(S, B, d, generator=g) - 1
    pre[1] = -5  # no entry at all
    pre[2, 3] = 2  # one row entirely above
    if not per_seed:
        pre = pre.transpose(0, 1).contiguous().transpose(0, 1)
    for thr in (0.0, torch.rand(S, d, generator=g) - 0.5):
        vals, rows, cols, counts = entries_above(pre, thr, None)
        for s in range(S):
            t = thr if isinstance(thr, float) else thr[s]
            rr, cc = (pre[s] > t).nonzero(as_tuple=True)
            n = int(counts[s])
            assert n == len(rr) and (rows[s].diff() >= 0).all()
            assert sorted(zip(rows[s, :n].tolist(), cols[s, :n].tolist())) == list(
                zip(rr.tolist(), cc.tolist())
            )
            assert torch.equal(vals[s, :n], pre[s][rows[s, :n], cols[s, :n]])
            assert (
                (vals[s, n:] == 0).all()
                and (rows[s, n:] == B - 1).all()
                and (cols[s, n:] == 0).all()
            )
        assert vals.shape[1] == max(1, int(counts.max()))
    assert entries_above(pre, 0.0, 0.01) is None and entries_above(pre, 0.0, 0.5) is not None


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_relu_family_sparse_training_equals_dense_and_seeds_alone(arch, monkeypatch):
    """train_saes forced through the sparse path (dense_above None; the tiny configs' codes are
    ~50% dense, so they would otherwise run dense) gives the dense reference's SAEs over 2 epochs
    (20 steps, short last batches), and each seed trained together equals it trained alone."""
    from dataclasses import replace

    from husai.sae.architectures import StackedSAE
    from husai.sae.train import train_saes

    from tiny_sae_configs import tiny_configs

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g) + 0.5
    cfg = replace(tiny_configs(epochs=2)[arch], batch_size=32)
    cls = ReLUSAE if arch == "relu" else JumpReLUSAE
    monkeypatch.setattr(cls, "dense_above", None)
    sparse = train_saes(acts, cfg, [11, 22]).sae
    for s, seed in enumerate([11, 22]):
        alone = train_saes(acts, cfg, [seed]).sae
        for name, t in alone.state_dict().items():
            torch.testing.assert_close(
                sparse.state_dict()[name][s], t[0], rtol=1e-4, atol=1e-5, msg=f"{name} {seed}"
            )
    monkeypatch.setattr(cls, "training_loss", StackedSAE.training_loss)
    dense = train_saes(acts, cfg, [11, 22]).sae
    for name, t in dense.state_dict().items():
        torch.testing.assert_close(sparse.state_dict()[name], t, rtol=1e-4, atol=1e-5, msg=name)
