"""Sparse training kernels for the TopK family: only the B*k active latents cost anything after
the encoder's forward matmul (Gao et al. 2024, sec. 5.3 make the same point for GPUs).

A step of a TopK SAE touches a dense [S, B, d_sae] block only once: the pre-activations, computed
without autograd. Everything after works on a coordinate list of active entries per seed,

    codes = (rows [S, M], cols [S, M])      entry m of seed s: input rows[s, m], latent cols[s, m]

and two custom autograd functions give the parameters their gradients from that list:

    encode_at(...)  values pre[s, rows, cols] with gradients to W_enc_T, b_enc, b_dec
    decode(...)     out[s, b] = sum_{m: rows[s, m] = b} z[s, m] W_dec[s, cols[s, m]]
                    (x_hat = out + b_dec)

The plain-PyTorch reference is the dense path, StackedSAE.training_loss (dense activate and
matmul decode); tests/sae/test_sae_arch.py checks loss and every gradient against it.
Why custom functions: autograd through a dense matmul spends B*d_sae*d_in multiply-adds on the
encoder gradient although only B*k columns of d pre are non-zero, and embedding_bag's own weight
gradient sorts and zero-fills more than needed. Both weight gradients here are one
"transposed embedding_bag" (rows grouped by latent, `_sum_rows_by_latent`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from husai.sae import kernels


def topk_rows(
    pre: torch.Tensor, k: int, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k along the last dim (values, indices; unsorted), faster than torch.topk on CPU
    for k << d. pre [..., d] -> ([..., k], [..., k]); bias [S, d] (pre [S, B, d]): of pre + bias[s].

    On the CPU with the compiled kernels: kernels.topk_rows (columns increasing, ties to the lower).
    Otherwise: split each row into m = d / g strided groups {j, j + m, ..., j + (g - 1) m} of g
    elements. The k largest elements of a row lie in the k groups with the largest maxima (any
    element above the k-th largest group maximum is in one of those groups), so a top-k over the m
    group maxima and then over the k * g candidates gives the same set as a top-k over d.
    Strided groups make the group maximum a vectorised elementwise max over g rows of m.
    """
    d = pre.shape[-1]
    # rows of one input: kernels.c, ~4x faster (measured)
    if 2 * k <= d <= 2**16 and kernels.usable(pre):
        vals, idx = kernels.topk_rows(pre.detach(), k, bias)
        return (pre.gather(-1, idx) if pre.requires_grad else vals), idx
    if bias is not None:  # pre [S, B, d] + bias [S, d]: written out here
        pre = pre + bias.unsqueeze(1)
    g = 8
    if pre.device.type != "cpu" or d % g or d // g < 2 * k:
        return pre.topk(k, dim=-1, sorted=False)
    m = d // g
    lead = pre.shape[:-1]
    grouped = pre.reshape(*lead, g, m)
    _, gi = grouped.amax(-2).topk(k, dim=-1, sorted=False)  # [..., k] best groups
    cand = grouped.gather(-1, gi.unsqueeze(-2).expand(*lead, g, k)).reshape(*lead, g * k)
    vals, j = cand.topk(k, dim=-1, sorted=False)
    return vals, gi.gather(-1, j % k) + (j // k) * m


class Codes:
    """The active entries of a batch, per seed: rows [S, M] (input index, sorted), cols [S, M]
    (latent index). `by_latent` groups the S*M entries by (seed, latent), computed once and shared
    by the encoder's and the decoder's weight gradients."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_inputs: int, d_sae: int):
        # contiguous once here, not in every kernel call (TopK's rows are an expanded view)
        self.rows, self.cols, self.B, self.d_sae = (
            rows.contiguous(),
            cols.contiguous(),
            n_inputs,
            d_sae,
        )  # B: rows per seed
        self._by_latent = self._stacked = None

    def _stack(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stacked is None:  # only the PyTorch path reads these (the kernels take rows, cols)
            off = torch.arange(self.rows.shape[0], device=self.rows.device).unsqueeze(1)
            self._stacked = (
                (self.cols + off * self.d_sae).reshape(-1),
                (self.rows + off * self.B).reshape(-1),
            )
        return self._stacked

    @property
    def latent(self) -> torch.Tensor:
        """[S*M] row of the stacked [S*d_sae, d_in] of each entry."""
        return self._stack()[0]

    @property
    def input(self) -> torch.Tensor:
        """[S*M] row of a stacked [S*B, d_in] of each entry."""
        return self._stack()[1]

    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order [S*M], input[order] [S*M], offsets [S*d_sae]): entries sorted by latent (stable,
        so each latent's sum runs in input order whatever other seeds are trained beside it), the
        stacked input row of each sorted entry, and the bag offsets."""
        if self._by_latent is None:
            n_keys = self.rows.shape[0] * self.d_sae
            key = (
                self.latent.to(torch.int32) if n_keys < 2**31 else self.latent
            )  # int32 sorts 2x faster
            order = torch.sort(key, stable=True).indices
            counts = torch.bincount(self.latent, minlength=n_keys)
            self._by_latent = (order, self.input[order], torch.cumsum(counts, 0) - counts)
        return self._by_latent


def _sum_rows_by_latent(codes: Codes, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[l] = sum over entries e with latent l of weights[e] * table[codes.input[e]].
    table [S*R, d] (stacked per seed), weights [S*M] -> [S*d_sae, d] (zero rows for idle
    latents)."""
    order, table_rows, offsets = codes.by_latent()
    return F.embedding_bag(
        table_rows, table, offsets, mode="sum", per_sample_weights=weights[order]
    )


class _EncodeAt(torch.autograd.Function):
    """vals = pre[s, rows, cols] with pre = (x - b_dec) @ W_enc + b_enc; the values come in
    precomputed (from the no-grad dense pass), the function supplies their gradients:
        d b_enc[s, j]       = sum over entries at latent j of g
        d W_enc_T[s, j, :]  = sum over entries at latent j of g * (x[row] - b_dec[s])
        d b_dec[s]          = -d b_enc[s] @ W_enc_T[s]
    x may hold fewer rows than the entries index (codes.B): row r reads x[r mod x's rows] (TopK's
    AuxK entries sit in rows B..2B-1 and reuse the batch's inputs).
    """

    @staticmethod
    def forward(ctx, vals, W_enc_T, b_enc, b_dec, x, codes):
        ctx.save_for_backward(W_enc_T, b_dec, x)
        ctx.codes = codes
        return vals.clone()

    @staticmethod
    def backward(ctx, g):
        W_enc_T, b_dec, x = ctx.saved_tensors
        codes = ctx.codes
        S, d_sae, d_in = W_enc_T.shape
        if kernels.usable(g, x):
            centred = x - b_dec.unsqueeze(1)  # [S, R', d_in]
            g_W, g_b_enc = kernels.sum_by_latent(
                g, codes.rows, codes.cols, centred, d_sae, with_bias=True
            )
            return (
                None,
                g_W,
                g_b_enc,
                -kernels.weighted_row_sum(g_b_enc, W_enc_T.detach()),
                None,
                None,
            )
        if x.shape[-2] != codes.B:
            x = (
                x.repeat(codes.B // x.shape[-2], 1)
                if x.ndim == 2
                else x.repeat(1, codes.B // x.shape[-2], 1)
            )
        g_b_enc = torch.zeros(S, d_sae, dtype=g.dtype, device=g.device).scatter_add_(
            1, codes.cols, g
        )
        # x [R, d_in] (shared) broadcasts over the seeds; x [S, R, d_in] is already per seed
        centred = (x - b_dec.unsqueeze(1)).reshape(-1, d_in)  # [S * R, d_in], small
        g_W = _sum_rows_by_latent(codes, centred, g.reshape(-1)).view(S, d_sae, d_in)
        g_b_dec = -torch.einsum(
            "sj,sjd->sd", g_b_enc, W_enc_T
        )  # 0.23 ms; as a bmm with a leading 1: 0.6 ms
        return None, g_W, g_b_enc, g_b_dec, None, None


class _DecoderGrad(torch.autograd.Function):
    """Identity on x_hat in the forward; the backward adds W_dec's gradient,
        d W_dec[s, j] = sum over entries at latent j of z * d x_hat[s, row],
    so the embedding_bag that computes x_hat can run on a detached W_dec (its autograd then
    computes only the gradient of z, a fused gather-dot)."""

    @staticmethod
    def forward(ctx, x_hat, W_dec, z, codes):
        ctx.save_for_backward(z)
        ctx.codes, ctx.shape = codes, W_dec.shape
        return x_hat.clone()

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        codes = ctx.codes
        S, d_sae, d_in = ctx.shape
        g_W = _sum_rows_by_latent(codes, g.reshape(-1, d_in), z.reshape(-1))
        return g, g_W.view(S, d_sae, d_in), None, None


class RowNorms(torch.autograd.Function):
    """||W[s, j]|| [S, d_sae] of W [S, d_sae, d_in], with the gradient g * W / ||W|| (0 for a zero
    row, as torch's norm gives it) written in one pass: autograd through W.norm spent ~6 ms per
    5 x 2048 x 128 step on its masked_fill/div/mul chain (profiled, 1 thread)."""

    @staticmethod
    def forward(ctx, W):
        norms = W.norm(dim=-1)
        ctx.save_for_backward(W, norms)
        return norms

    @staticmethod
    def backward(ctx, g):
        W, norms = ctx.saved_tensors
        scale = torch.where(norms > 0, g / norms, torch.zeros_like(g))
        return W * scale.unsqueeze(-1)


def encode_at(
    pre_vals: torch.Tensor, W_enc_T, b_enc, b_dec, x: torch.Tensor, codes: Codes
) -> torch.Tensor:
    """pre_vals [S, M] (no grad) -> the same values [S, M] with gradients to
    W_enc_T [S, d_sae, d_in], b_enc [S, d_sae], b_dec [S, d_in]; x holds the inputs that codes.rows
    index (R = codes.B, or R a multiple of x's rows, read cyclically): [R, d_in] shared by all
    seeds, or [S, R, d_in] one set per seed."""
    return _EncodeAt.apply(pre_vals, W_enc_T, b_enc, b_dec, x, codes)


class _KernelDecode(torch.autograd.Function):
    """decode through kernels.c: out = sparse_decode(z, W_dec); the backward gives z its gradient
    <g[row], W_dec[col]> per entry and W_dec its gradient by latent, sum of z g[row], in one pass
    (kernels.decode_backward)."""

    @staticmethod
    def forward(ctx, z, W_dec, codes, from_relu):
        ctx.save_for_backward(z, W_dec)
        ctx.codes, ctx.from_relu = codes, from_relu
        return kernels.sparse_decode(z, codes.rows, codes.cols, W_dec, codes.B)

    @staticmethod
    def backward(ctx, g):
        z, W_dec = ctx.saved_tensors
        codes = ctx.codes
        g_W, g_z = kernels.decode_backward(
            z, codes.rows, codes.cols, g, W_dec, skip_zero=ctx.from_relu
        )
        return (
            (g_z if ctx.needs_input_grad[0] else None),
            (g_W if ctx.needs_input_grad[1] else None),
            None,
            None,
        )


def decode(
    z: torch.Tensor, W_dec: torch.Tensor, codes: Codes, from_relu: bool = False
) -> torch.Tensor:
    """z [S, M] (entry values) -> sum_m z W_dec[cols] per input, [S, B, d_in] (no b_dec).
    from_relu: z (up to a positive factor) came out of a relu, so z's gradient is never read where
    z = 0 and the kernels skip it (AuxK's entries are mostly 0: 47-59% of a step's entries once
    latents die, measured on the grokked model)."""
    if kernels.usable(z, W_dec):
        return _KernelDecode.apply(z, W_dec, codes, from_relu)
    S, d_sae, d_in = W_dec.shape
    B = codes.B
    counts = torch.bincount(codes.input, minlength=S * B)
    offsets = torch.cumsum(counts, 0) - counts  # codes.rows is sorted per seed: bags are contiguous
    out = F.embedding_bag(
        codes.latent,
        W_dec.detach().reshape(S * d_sae, d_in),
        offsets,
        mode="sum",
        per_sample_weights=z.reshape(-1),
    )
    return _DecoderGrad.apply(out, W_dec, z.detach(), codes).view(S, B, d_in)


# Sparse training runs only while the entry list holds at most this fraction of the [S, B, d_sae]
# block; above it the step runs dense (`dense_pre`). Measured (S = 5, d_in 128, d_sae 2048,
# 1 CPU thread, loss + backward, B = 64 / 256): sparse/dense ms at L0 100: 29/45, 74/121;
# L0 200: 84/107, 219/211; L0 400: 117/103, 350/221; L0 800 (at init about half the entries are
# above 0): 166/99, 607/201. The crossover is near 10% of the block (JumpReLU's the same, counting
# its list, which also holds the kernel window below theta).
DENSE_ABOVE = 0.1


def entries_above(pre: torch.Tensor, thr, dense_above: float | None = DENSE_ABOVE):
    """The entries of pre [S, B, d] with pre > thr (a number, or one threshold per latent [S, d])
    as a coordinate list per seed: (vals [S, M], rows [S, M], cols [S, M], counts [S]), rows sorted
    per seed (husai.sae.sparse.Codes), M = max(1, the largest count). Seed s's entries are its
    first counts[s]; the rest are padding at (row B - 1, col 0) with value 0, which keeps the rows
    sorted (callers make padding contribute nothing: a zero value and a zero gradient; every sum
    it enters then gains exact zeros, so a seed's result does not depend on its padding).
    None when more than dense_above of the block is selected (the caller then runs dense).

    pre may be the [B, S, d]-in-memory view that pre_acts returns for a shared batch: it is read
    in its memory order, never copied. The entries come out one (seed, row) block after another
    in memory order; prefix sums of the blocks' counts then place each block in its seed's list.

    Extraction measured on 5 x 256 x 2048 float32 (1 thread) with 2% of the entries above
    (10%, 50% in brackets): the mask `pre > thr` 1.7 ms, then nonzero on the flat mask 3.1 ms
    (6.4, 17); masked_select instead 19 ms; a cumsum compaction (position = running count, one
    dense scatter) 28 ms. A two-level search (GROUP-strided group maxima as in topk_rows, then
    only the members of groups above) measured the same as the flat nonzero at L0 40 and slower
    when dense (interleaved runs, 8-19 ms for the whole function at L0 40 on a loaded machine).
    """
    S, B, d = pre.shape
    if not (pre.is_contiguous() or pre.transpose(0, 1).is_contiguous()):
        pre = pre.contiguous()  # not a layout pre_acts returns
    seed_major = pre.is_contiguous()
    mem = pre if seed_major else pre.transpose(0, 1)  # [S, B, d] or [B, S, d], contiguous
    dev = pre.device
    if isinstance(thr, torch.Tensor):
        thr = thr.unsqueeze(1) if seed_major else thr.unsqueeze(0)
    mask = (mem > thr).view(-1)
    if dense_above is not None and int(torch.count_nonzero(mask)) > dense_above * mask.numel():
        return None
    idx = torch.nonzero(mask).squeeze(1)  # [N], memory order
    vals = mem.view(-1)[idx]
    blk = idx // d  # block (seed, row) in memory order
    cols = idx - blk * d
    per_block = torch.bincount(blk, minlength=S * B)
    bk = torch.arange(S * B, device=dev)
    s_b, b_b = (bk // B, bk % B) if seed_major else (bk % S, bk // S)  # each block's seed and row
    per_row = per_block.view(S, B) if seed_major else per_block.view(B, S).T  # [S, B]
    counts = per_row.sum(1)  # [S]
    M = max(1, int(counts.max()))
    # entry n of block k goes to seed s_b[k]'s slot (entries of its earlier rows)
    # + (n - start of block k)
    base = (
        (torch.cumsum(per_row, 1) - per_row)[s_b, b_b]
        + s_b * M
        - (torch.cumsum(per_block, 0) - per_block)
    )
    pos = torch.arange(idx.numel(), device=dev) + base[blk]
    out_rows = torch.full((S * M,), B - 1, dtype=torch.long, device=dev)
    out_cols = torch.zeros(S * M, dtype=torch.long, device=dev)
    out_vals = torch.zeros(S * M, dtype=pre.dtype, device=dev)
    out_rows[pos], out_cols[pos], out_vals[pos] = b_b[blk], cols, vals
    return out_vals.view(S, M), out_rows.view(S, M), out_cols.view(S, M), counts


class _DenseEncode(torch.autograd.Function):
    """pre [S, B, d_sae] from the no-grad pass, given the gradients it has as a function of W_enc_T,
    b_enc, b_dec (the dense counterpart of husai.sae.sparse's encode_at, for a step too dense for
    the sparse path):
        d b_enc = sum_b g,  d W_enc_T[s] = g[s]^T (x - b_dec[s]),  d b_dec = -d b_enc @ W_enc_T."""

    @staticmethod
    def forward(ctx, pre, W_enc_T, b_enc, b_dec, x):
        ctx.save_for_backward(W_enc_T, b_dec, x)
        return pre.view_as(pre)

    @staticmethod
    def backward(ctx, g):
        W_enc_T, b_dec, x = ctx.saved_tensors
        g_b_enc = g.sum(1)  # [S, d_sae]
        xs = x if x.ndim == 3 else x.expand(g.shape[0], -1, -1)
        g_W = torch.bmm(g.transpose(1, 2), xs) - g_b_enc.unsqueeze(-1) * b_dec.unsqueeze(1)
        g_b_dec = -torch.einsum("sj,sjd->sd", g_b_enc, W_enc_T)
        return None, g_W, g_b_enc, g_b_dec, None


def dense_pre(pre: torch.Tensor, W_enc_T, b_enc, b_dec, x: torch.Tensor) -> torch.Tensor:
    """pre [S, B, d_sae] from the no-grad pass, with its gradients to W_enc_T, b_enc, b_dec: a step
    that turns out too dense for the sparse path continues with StackedSAE.loss_from_pre without
    computing the pre-activations again."""
    return _DenseEncode.apply(pre, W_enc_T, b_enc, b_dec, x)


def sparse_stats(loss, mse, var, z, cols, B: int, d_sae: int) -> dict:
    """The stats of StackedSAE.training_loss from entry values z [S, M] at latents cols [S, M]."""
    with torch.no_grad():
        active = z > 0
        fired = (
            torch.zeros(z.shape[0], d_sae, device=z.device).scatter_add_(1, cols, active.float())
            > 0
        )
        return dict(
            loss=loss.detach(),
            mse=mse.detach(),
            l0=active.float().sum(1) / B,
            ev=1 - mse.detach() / var,
            fired=fired,
        )
