"""The TopK SAE (Gao et al. 2024, sec. 2.3), stacked over S seeds (shapes in
husai.sae.architectures): z = ReLU(TopK_k(pre)); loss = FVU + aux_coeff * AuxK. Its config keys
(TopKConfig) and its registration are at the end of this file; BatchTopK and Matryoshka, which share
its sparse step, are in husai.sae.batchtopk.

Which loss is which (one TopK loss, four code paths; tests/sae compares each with the reference):
  reference   StackedSAE.training_loss with `activate` and `sparsity_loss`: dense, autograd,
              written as the paper states it; only the tests run it.
  fast path   TopKSAE.training_loss: one kernels.topk_step call does selection, AuxK, decode,
              the loss and the whole backward (_KernelTopKStep), where the C kernels are built;
              otherwise the sparse step with the C loss (_KernelFVU) or, without kernels, the
              sparse PyTorch step (husai.sae.sparse). BatchTopK and Matryoshka take the sparse
              step, never the one-call one (their selection spans the batch).
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from husai.errors import HusaiError
from husai.sae import kernels
from husai.sae.base import StackedSAE, batch_variance
from husai.sae.family import Family, FamilyConfig, register
from husai.sae.sparse import Codes, RowNorms, decode, encode_at, topk_rows


@functools.lru_cache(maxsize=16)
def _row_index(B: int, k: int, device, first: int = 0) -> torch.Tensor:
    """[B * k]: first + b for each of k entries of input b (each step's coordinate lists;
    cached)."""
    return first + torch.arange(B, device=device).repeat_interleave(k)


def _auxk_loss(x, x_hat, pre, W_dec, dead, k_aux: int) -> torch.Tensor:
    """Gao et al. sec. A.2 AuxK: reconstruct the residual e = x - x_hat (detached) from the top
    k_aux pre-activations among dead latents; normalised by the residual's variance. -> [S]."""
    S, B, d_sae = pre.shape
    if not bool(dead.any()):
        return pre.new_zeros(S)
    k_aux = min(k_aux, d_sae)
    e = (x - x_hat).detach()  # [S, B, d_in]
    masked = pre.masked_fill(~dead.unsqueeze(1), float("-inf"))
    vals, idx = masked.topk(k_aux, dim=-1, sorted=False)  # [S, B, k_aux]
    z_aux = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))  # relu(-inf) = 0 when few dead
    return _auxk_fvu(torch.bmm(z_aux, W_dec), e, dead)


def _auxk_fvu(e_hat: torch.Tensor, e: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """e_hat, e [S, B, d_in], dead [S, d_sae] -> per-seed FVU of the residual's reconstruction [S].
    A seed with no dead latent gets 0 (its e_hat is 0, which would still score ||e||^2)."""
    err = (e_hat - e).pow(2).sum(-1).mean(1)
    var = (e - e.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).clamp_min(1e-12)
    return torch.where(dead.any(-1), err / var, torch.zeros_like(err))


class _KernelFVU(torch.autograd.Function):
    """The loss terms of TopKSAE.training_loss from its one decode, through kernels.fvu_loss:
    out [S, (L + aux) B, d_in], b_dec [S, d_in] -> (loss [S], mse [S], var [S]; only loss has a
    gradient). The forward writes the gradient too, so the backward is a scale: ~40 ATen calls
    and their autograd nodes (the slices, levels, AuxK residual, variances) become one pass."""

    @staticmethod
    def forward(ctx, out, b_dec, x, levels, aux_on, aux_coeff):
        loss, mse, var, g_out, g_bdec = kernels.fvu_loss(out, b_dec, x, levels, aux_on, aux_coeff)
        ctx.save_for_backward(g_out, g_bdec)
        ctx.mark_non_differentiable(mse, var)
        return loss, mse, var

    @staticmethod
    def backward(ctx, g_loss, _g_mse, _g_var):
        g_out, g_bdec = ctx.saved_tensors
        if not bool((g_loss == 1).all()):  # loss.sum()'s ones: the gradients as written
            g_out, g_bdec = g_out * g_loss.view(-1, 1, 1), g_bdec * g_loss.view(-1, 1)
        return g_out, g_bdec, None, None, None, None


class _KernelTopKStep(torch.autograd.Function):
    """TopKSAE.training_loss's sparse part (selection, AuxK, decode, loss) with its whole backward
    in one kernels.topk_step call: (W_enc_T, b_enc, b_dec, W_dec, pre, bias, x, dead) -> (loss, mse,
    var, l0 [S], fired [S, d_sae]; only loss has a gradient). The forward writes the parameters'
    gradients, the backward scales them: no autograd graph, no per-op dispatch (a one-seed step is
    ~110 ATen calls and 9 kernel calls otherwise)."""

    @staticmethod
    def forward(ctx, W_enc_T, b_enc, b_dec, W_dec, pre, bias, x, dead, ks, k_aux, aux_coeff):
        f = kernels.topk_step(pre, bias, x, W_enc_T, b_dec, W_dec, dead, ks, k_aux, aux_coeff)
        # kept as an attribute and dropped in backward, not saved: a gradient that only autograd
        # holds is moved into .grad, one that ctx still holds is copied (AccumulateGrad;
        # 2 x 1 MB a seed)
        ctx.grads = [f["W_enc_T"], f["b_enc"], f["b_dec"], f["W_dec"]]
        ctx.mark_non_differentiable(f["mse"], f["var"], f["l0"], f["fired"])
        return f["loss"], f["mse"], f["var"], f["l0"], f["fired"]

    @staticmethod
    def backward(ctx, g_loss, *_):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError(
                "_KernelTopKStep: backward twice (its gradients are handed over once)"
            )
        if not bool((g_loss == 1).all()):  # loss.sum()'s ones: the gradients as written
            grads = [g * g_loss.view(-1, *[1] * (g.ndim - 1)) for g in grads]
        return (*grads, None, None, None, None, None, None, None)


class TopKSAE(StackedSAE):
    """z = ReLU(TopK_k(pre)) per input (Gao et al. 2024, eq. 3); loss = MSE + aux_coeff * AuxK."""

    architecture = "topk"
    normalized_mse = True
    # select_latents takes pre without b_enc (StackedSAE.pre_acts split_bias)
    selection_adds_bias = True
    tracks_min_active = False  # stats["min_active"]: BatchTopK's threshold estimate reads it
    # training_loss through kernels.topk_step (TopK itself; not BatchTopK, Matryoshka)
    one_call_step = True

    def __init__(
        self,
        n_seeds: int,
        d_in: int,
        d_sae: int,
        k: int | list[int],
        k_aux: int | None = None,
        aux_coeff: float = 1 / 32,
        rescale: bool = False,
    ):
        """k: one for every slot, or a list with one per slot (cells that differ only in k trained
        in one pass, husai.sae.cells.train_cells). rescale: StackedSAE.rescale, a way of training,
        so it is not among the hyper-parameters a saved SAE records (training ends with unit
        rows)."""
        super().__init__(n_seeds, d_in, d_sae)
        self.rescale, self.unit_norm_decoder = rescale, not rescale
        self.ks = [int(k)] * n_seeds if isinstance(k, int) else [int(v) for v in k]
        if len(self.ks) != n_seeds:
            raise ValueError(f"k: need one per slot ({n_seeds}), got {k}")
        self.k, self.aux_coeff = (
            max(self.ks),
            aux_coeff,
        )  # k: the selection width (every slot's k if uniform)
        self.k_aux = k_aux if k_aux is not None else max(1, d_in // 2)  # Gao et al. A.2: ~d_model/2
        self.hparams = dict(k=k, k_aux=k_aux, aux_coeff=aux_coeff)
        uniform = len(set(self.ks)) == 1
        self.register_buffer(
            "_slot_k", None if uniform else torch.tensor(self.ks), persistent=False
        )

    def slot_hparams(self, slots: list[int]) -> dict:
        ks = [self.ks[s] for s in slots]
        return dict(self.hparams, k=ks[0] if len(set(ks)) == 1 else ks)

    def _per_slot(
        self, vals: torch.Tensor, idx: torch.Tensor, per_k: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """vals, idx [S, ..., n]: each row's n = self.k * per_k largest (unsorted). With per-slot k,
        slot s keeps its ks[s] * per_k largest and the rest get value 0 (relu(0) = 0 and its
        gradient is 0: those entries decode to nothing and train nothing)."""
        if self._slot_k is None:
            return vals, idx
        vals, order = vals.sort(
            dim=-1, descending=True, stable=True
        )  # ties: the lower column (columns come increasing)
        keep = torch.arange(vals.shape[-1], device=vals.device) < (self._slot_k * per_k).view(
            -1, *[1] * (vals.ndim - 1)
        )
        return vals.masked_fill(~keep, 0.0), idx.gather(-1, order)

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        return self.aux_coeff * _auxk_loss(x, x_hat, pre, self.unit_decoder(), dead, self.k_aux)

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        vals, idx = self._per_slot(*topk_rows(pre, self.k))
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    def select_latents(self, pre: torch.Tensor, bias: torch.Tensor | None = None):
        """pre [S, B, d_sae] (+ bias [S, d_sae], when pre_acts split it off) -> (vals [S, M],
        rows [S, M], cols [S, M]): the selected pre-activations as a coordinate list sorted by row,
        M = B * k (before the ReLU)."""
        S, B, _ = pre.shape
        vals, cols = self._per_slot(*topk_rows(pre, self.k, bias))  # [S, B, k]
        return (
            vals.reshape(S, -1),
            _row_index(B, self.k, pre.device).expand(S, -1),
            cols.reshape(S, -1),
        )

    def _dead_topk(self, pre: torch.Tensor, dead: torch.Tensor, bias: torch.Tensor | None = None):
        """Top-k_aux pre-activations among dead latents: (vals [S, B, k], cols [S, B, k]) with
        k = min(k_aux, the largest dead count): a seed with fewer dead latents gets padding, -inf at
        a live column (relu'd to 0, no gradient), so only as many entries as some seed can fill are
        decoded (Gao et al.'s AuxK keeps min(k_aux, dead), the same sum). Searches only the dead
        columns, much cheaper than a top-k over all d_sae when few latents are dead. bias: as
        select_latents."""
        S, B, d_sae = pre.shape
        if kernels.usable(pre):
            return kernels.topk_among(
                pre, dead, self.k_aux, above=0.0, bias=bias
            )  # a value <= 0 adds nothing
        n_dead = int(dead.sum(1).max())
        k_aux = min(self.k_aux, n_dead)
        if bias is not None:
            pre = pre + bias.unsqueeze(1)
        if n_dead > d_sae // 2:
            return pre.masked_fill(~dead.unsqueeze(1), float("-inf")).topk(
                k_aux, dim=-1, sorted=False
            )
        dead_first = torch.sort(dead.to(torch.int8), dim=1, descending=True, stable=True).indices[
            :, :n_dead
        ]  # [S, n]
        is_dead = dead.gather(1, dead_first).unsqueeze(1)  # padding columns are live: masked out
        cand = pre.gather(2, dead_first.unsqueeze(1).expand(S, B, n_dead)).masked_fill(
            ~is_dead, float("-inf")
        )
        vals, j = cand.topk(k_aux, dim=-1, sorted=False)
        return vals, dead_first.unsqueeze(1).expand(S, B, n_dead).gather(2, j)

    n_levels = 1  # nested reconstructions in the loss (MatryoshkaSAE: one per prefix width)

    def level_of(self, cols: torch.Tensor) -> torch.Tensor:
        """cols [S, M] -> the level of each entry's latent [S, M] (only used when n_levels > 1)."""
        raise NotImplementedError

    def training_loss(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Same loss as StackedSAE.training_loss (FVU + aux_coeff * AuxK), computed sparsely: one
        dense no-grad pass for the pre-activations, then only the selected entries
        (husai.sae.sparse).
        x [B, d_in] (one batch for all seeds) or [S, B, d_in] (a batch per seed).

        All reconstructions of the step come out of one sparse decode of R = (L + aux) * B rows:
        with L levels, level l's entries decode into rows l*B..(l+1)*B-1 (a prefix sum over levels
        gives the nested reconstructions); the AuxK entries decode into the last B rows (their
        reconstruction e_hat of the residual). One by-latent sort, one encode and one decode serve
        every term.

        TopK itself on the CPU with the kernels: after the matmul, the whole step is one
        kernels.topk_step call (_KernelTopKStep), the same arithmetic as the code below, which runs
        it piece by piece (BatchTopK, Matryoshka, free decoder norms, other devices).
        """
        S, B, L = self.n_seeds, x.shape[-2], self.n_levels
        if self.one_call_step and not self.rescale and kernels.usable(x, self.W_enc_T, self.W_dec):
            with torch.no_grad():
                pre, bias = self.pre_acts(x, reuse_buffer=True, split_bias=True)
            loss, mse, var, l0, fired = _KernelTopKStep.apply(
                self.W_enc_T,
                self.b_enc,
                self.b_dec,
                self.W_dec,
                pre,
                bias,
                x,
                dead,
                self.ks,
                self.k_aux,
                self.aux_coeff,
            )
            return loss.sum(), dict(
                loss=loss.detach(), mse=mse, l0=l0, ev=1 - mse / var, fired=fired
            )
        aux = bool(dead.any())
        with torch.no_grad():
            # [S, B, d_sae], valid until the next step; with the kernels, the bias is added as they
            # select
            split = self.selection_adds_bias and not self.rescale and kernels.usable(x)
            pre, bias = (
                self.pre_acts(x, reuse_buffer=True, split_bias=True)
                if split
                else (self.pre_acts(x, reuse_buffer=True), None)
            )
            pvals, rows, cols = self.select_latents(pre, bias)  # [S, M], sorted by row
            M = pvals.shape[1]
            if L > 1:
                rows, order = (rows + B * self.level_of(cols)).sort(dim=1, stable=True)
                pvals, cols = pvals.gather(1, order), cols.gather(1, order)
            if aux:
                avals, acols = self._dead_topk(pre, dead, bias)  # [S, B, <= k_aux]
                arows = _row_index(B, acols.shape[-1], x.device, first=L * B)
                pvals = torch.cat([pvals, avals.reshape(S, -1)], 1)
                rows = torch.cat([rows, arows.expand(S, -1)], 1)
                cols = torch.cat([cols, acols.reshape(S, -1)], 1)
        R = (L + aux) * B
        codes = Codes(rows, cols, R, self.d_sae)
        if self.rescale:  # pvals are pre * n: the parameters' gradients come through both factors
            n = RowNorms.apply(self.W_dec).clamp_min(1e-12).gather(1, cols)  # [S, M']
            # AuxK's padding is -inf (fewer dead latents than k_aux): as 0 it is still relu'd to 0,
            # with no gradient (relu'(0) = 0 in torch), where -inf * n would send NaN to n
            raw = (pvals.nan_to_num(neginf=0.0) if aux else pvals) / n.detach()
            z = F.relu(encode_at(raw, self.W_enc_T, self.b_enc, self.b_dec, x, codes) * n)
            out = decode(z / n, self.W_dec, codes, from_relu=True)
        else:
            z = F.relu(encode_at(pvals, self.W_enc_T, self.b_enc, self.b_dec, x, codes))
            out = decode(z, self.W_dec, codes, from_relu=True)  # [S, R, d_in], without b_dec
        if kernels.usable(out, x):  # the same terms in one pass, the gradient written alongside
            loss, mse, var = _KernelFVU.apply(
                out, self.b_dec, x, L, dead.any(-1) if aux else None, self.aux_coeff
            )
        else:
            recon = out[:, : L * B].view(S, L, B, -1)
            recon = (recon.cumsum(1) if L > 1 else recon) + self.b_dec[
                :, None, None
            ]  # [S, L, B, d_in]
            x_hat = recon[:, -1]
            var = batch_variance(x)
            sq = (recon - (x if x.ndim == 2 else x.unsqueeze(1))).pow(2).sum(-1).mean(-1)  # [S, L]
            mse = sq[:, -1]
            loss = sq.sum(1) / var
            if aux:
                loss = loss + self.aux_coeff * _auxk_fvu(
                    out[:, L * B :], (x - x_hat).detach(), dead
                )
        with torch.no_grad():
            vals, cols = z[:, :M], cols[:, :M]
            active = vals > 0
            fired = (
                torch.zeros(S, self.d_sae, device=x.device).scatter_add_(1, cols, active.float())
                > 0
            )
            stats = dict(
                loss=loss.detach(),
                mse=mse.detach(),
                l0=active.float().sum(1) / B,
                ev=1 - mse.detach() / var,
                fired=fired,
            )
            if self.tracks_min_active:
                stats["min_active"] = (
                    torch.where(active, vals, torch.full_like(vals, float("inf"))).min(1).values
                )
        return loss.sum(), stats

    def saelens_form(self, slot: int) -> tuple[str, dict, dict]:
        """SAELens's inference form of seed slot `slot`: (architecture, extra tensors, extra cfg
        keys)."""
        return (
            "topk",
            {},
            dict(k=self.slot_hparams([slot])["k"], rescale_acts_by_decoder_norm=False),
        )


@dataclass
class TopKConfig(FamilyConfig):
    """The TopK family's keys (BatchTopK and Matryoshka extend them)."""

    sparsity_key = "k"
    columns = ("k",)

    k: int = 32
    """Active latents per input (topk) or on average per input (batchtopk, matryoshka)."""
    aux_coeff: float = 0.03125
    """AuxK loss coefficient (Gao et al. A.2: 1/32)."""
    k_aux: typing.Optional[int] = None
    """Dead latents used by AuxK; null = d_in // 2 (Gao et al. A.2)."""

    def validate(self, d_sae: int | None, width: str) -> None:
        if self.k < 1:
            raise HusaiError(f"k must be >= 1, got {self.k}")
        if d_sae is not None and self.k >= d_sae:
            raise HusaiError(f"k must be smaller than d_sae = {d_sae} ({width}), got k = {self.k}")
        if self.aux_coeff < 0:
            raise HusaiError(f"config key 'aux_coeff' must be >= 0, got {self.aux_coeff}")
        if self.k_aux is not None and self.k_aux < 1:
            raise HusaiError(f"config key 'k_aux' must be >= 1, got {self.k_aux}")

    def build(self, n_seeds, d_in, d_sae, rescale, sparsity=None):
        k = self.k if sparsity is None else sparsity
        return TopKSAE(n_seeds, d_in, d_sae, k, self.k_aux, self.aux_coeff, rescale)

    def cell_knob(self) -> str:
        return f"k{self.k}"

    def fixed_l0(self) -> float | None:
        return self.k

    def table(self, weight: float | None) -> dict:
        return {"k": self.k}


register(Family("topk", TopKConfig, TopKSAE, label="TopK", color="tab:blue", rescalable=True))
