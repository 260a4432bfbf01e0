"""The kernels that take whole parts of a TopK step: kernels.fvu_loss (the TopK family's loss terms
with their gradient in one pass, through topk._KernelFVU) against the autograd formulas it replaces,
in float64, and kernels.topk_step (the whole sparse step, forward and backward) against the step
through the PyTorch path."""

from __future__ import annotations

import pytest
import torch
from test_sae_kernels import _gen, _kernels_on, _threads  # noqa: F401 (_kernels_on: autouse fixture)

from husai.sae import kernels
from husai.sae.base import batch_variance
from husai.sae.topk import TopKSAE, _auxk_fvu, _KernelFVU


def _reference(out, b_dec, x, levels, dead, aux_coeff):
    """TopKSAE.training_loss's PyTorch terms (levels' reconstructions by a prefix sum, AuxK's FVU of
    the detached residual) -> (loss, mse, var) [S]."""
    S, B = out.shape[0], x.shape[-2]
    recon = out[:, : levels * B].view(S, levels, B, -1).cumsum(1) + b_dec[:, None, None]
    var = batch_variance(x)
    sq = (recon - (x if x.ndim == 2 else x.unsqueeze(1))).pow(2).sum(-1).mean(-1)
    loss = sq.sum(1) / var
    if dead is not None:
        loss = loss + aux_coeff * _auxk_fvu(out[:, levels * B :], (x - recon[:, -1]).detach(), dead)
    return loss, sq[:, -1], var


CASES = [  # S, B, d, levels, aux, shared x
    (1, 256, 128, 1, True, False),  # the grokked model's one-seed TopK step
    (3, 37, 20, 1, True, True),  # seed 1 without a dead latent: no AuxK term, zero AuxK gradient
    (3, 37, 20, 3, True, False),  # Matryoshka's nested levels
    (2, 16, 8, 2, False, True),
    (3, 40, 17, 1, False, False),
]


@pytest.mark.parametrize("S,B,d,levels,aux,shared", CASES)
def test_fvu_loss_matches_autograd(S, B, d, levels, aux, shared):
    """Loss, MSE and variance, and the gradients of a weighted sum of the seeds' losses (weights
    1..S, so the backward's scaling is checked too) to out and b_dec, equal the float64 autograd
    reference to float32 rounding."""
    g = _gen(S * 100 + B)
    x = torch.randn(B, d, generator=g) + 0.5 if shared else torch.randn(S, B, d, generator=g) + 0.5
    out = torch.randn(S, (levels + aux) * B, d, generator=g).requires_grad_()
    b_dec = torch.randn(S, d, generator=g).requires_grad_()
    dead = None
    if aux:
        dead = torch.zeros(S, 50, dtype=torch.bool)
        dead[0, 3] = True
        dead[S - 1, 7] = S > 2
    weights = torch.arange(1.0, S + 1)
    ref = _reference(out.double(), b_dec.double(), x.double(), levels, dead, 0.1)
    (ref[0] * weights.double()).sum().backward()
    ref_g_out, ref_g_bdec = out.grad.clone(), b_dec.grad.clone()
    out.grad = b_dec.grad = None

    got = _KernelFVU.apply(out, b_dec, x, levels, None if dead is None else dead.any(-1), 0.1)
    (got[0] * weights).sum().backward()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b.detach().expand(S), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.grad, ref_g_out.float(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(b_dec.grad, ref_g_bdec.float(), rtol=1e-4, atol=1e-7)
    if aux and S > 2:
        main_only = _reference(
            out.detach().double(), b_dec.detach().double(), x.double(), levels, None, 0.1
        )[0]
        assert abs(float(got[0][1].detach()) - float(main_only[1])) < 1e-5 * float(
            main_only[1]
        )  # seed 1: no AuxK term
        assert not bool(out.grad[1, levels * B :].any())


def test_fvu_loss_handles_constant_data_and_is_thread_invariant():
    """A batch with no variance (var clamped to 1e-12, as batch_variance) gives finite numbers, and
    the results are bitwise the same on 1, 2 and 3 threads (one task per seed)."""
    g = _gen(4)
    x = torch.ones(3, 9, 6)
    out = torch.randn(3, 18, 6, generator=g) * 1e-3
    b_dec = torch.ones(3, 6)
    aux_on = torch.tensor([True, False, True])
    results = {}
    for n in (1, 2, 3):
        with _threads(n):
            results[n] = kernels.fvu_loss(out, b_dec, x, 1, aux_on, 0.5)
    for n in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[n]))
    loss, mse, var = (t.double() for t in results[1][:3])
    assert torch.equal(var, torch.full((3,), 1e-12, dtype=torch.float64).float().double())
    ref = _reference(out.double(), b_dec.double(), x.double(), 1, aux_on.unsqueeze(1), 0.5)
    torch.testing.assert_close(loss, ref[0], rtol=1e-5, atol=0)
    assert bool(torch.isfinite(results[1][3]).all())


@pytest.mark.parametrize(
    "ks,shared,dead_counts,d_sae",
    [
        (4, False, (0, 0, 0), 40),
        (4, False, (30, 0, 2), 40),
        (4, True, (30, 5, 2), 40),
        ([2, 6, 4], False, (3, 0, 40), 40),
        ([2, 6, 4], True, (40, 40, 40), 40),
        (32, False, (60, 0, 9), 256),
    ],
    ids=["no-dead", "dead", "shared-batch", "per-slot-k", "all-dead", "k32-avx512-groups"],
)
def test_topk_step_matches_the_pytorch_step(monkeypatch, ks, shared, dead_counts, d_sae):
    """One TopK step through kernels.topk_step (one call: selection, AuxK, decode, loss, backward)
    and through the PyTorch path (HUSAI_KERNELS=off): the same loss, MSE, L0, EV and fired latents,
    and the same gradients for all four parameters, of 2.5 x the loss (the backward's scaling).
    Seeds with and without dead latents (AuxK's term only for the first), fewer dead latents than
    k_aux = 6 (padding), every latent dead, a k per slot (the padding entries of the smaller ks), a
    batch shared by all seeds (pre's [B, S, d_sae] layout), and k 32 of 256 (64 groups: the
    selection's AVX-512 group maxima and counting)."""
    g = _gen(7)
    S, B, d_in = 3, 33, 12
    sae = TopKSAE(S, d_in, d_sae, ks, k_aux=6).init_weights(
        [1, 2, 3], torch.randn(d_in, generator=g)
    )
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(S, d_sae, generator=g))
    x = torch.randn(B, d_in, generator=g) if shared else torch.randn(S, B, d_in, generator=g)
    dead = torch.zeros(S, d_sae, dtype=torch.bool)
    for s, n in enumerate(dead_counts):
        dead[s, torch.randperm(d_sae, generator=g)[:n]] = True

    def step():
        sae.zero_grad(set_to_none=True)
        loss, stats = sae.training_loss(x, dead)
        loss.backward(torch.tensor(2.5))  # not 1: the kernel's gradients scaled
        return stats, {n: p.grad.clone() for n, p in sae.named_parameters()}

    calls = []
    monkeypatch.setattr(
        kernels, "topk_step", lambda *a, _f=kernels.topk_step: calls.append(1) or _f(*a)
    )
    got, got_grads = step()
    assert calls == [1]
    monkeypatch.setenv("HUSAI_KERNELS", "off")
    want, want_grads = step()
    assert calls == [1]
    for name in ("loss", "mse", "l0", "ev"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(got["fired"], want["fired"])
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    if any(dead_counts):
        assert float(want["loss"][0]) > float(
            want["mse"][0] / batch_variance(x if shared else x[0])
        )  # AuxK counted


def test_topk_step_is_thread_invariant():
    """Bitwise the same loss and gradients on 1, 2 and 3 threads."""
    g = _gen(8)
    sae = TopKSAE(2, 10, 48, 5, k_aux=8).init_weights([1, 2], torch.zeros(10))
    x = torch.randn(2, 40, 10, generator=g)
    dead = torch.rand(2, 48, generator=g) < 0.3
    results = {}
    for n in (1, 2, 3):
        with _threads(n):
            sae.zero_grad(set_to_none=True)
            loss, stats = sae.training_loss(x, dead)
            loss.backward()
            results[n] = [stats["loss"], *(p.grad.clone() for p in sae.parameters())]
    for n in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[n]))


def test_topk_step_hands_its_gradients_over_once():
    """The one-call step's gradients go to autograd once (moved into .grad, not copied): a second
    backward through the same graph is refused with a clear error, not silently given stale
    numbers."""
    sae = TopKSAE(1, 8, 32, 3).init_weights([1], torch.zeros(8))
    loss, _ = sae.training_loss(
        torch.randn(16, 8, generator=_gen(9)), torch.zeros(1, 32, dtype=torch.bool)
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward twice"):
        loss.backward()
