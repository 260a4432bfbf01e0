"""StackedSAE: the parameters, init, dense encode/decode and dense training loss shared by every
architecture (husai.sae.architectures explains the shapes and lists the architectures).
"""

from __future__ import annotations

import torch
from torch import nn

from husai.sae import kernels


def rows_times(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W [S, D, d] @ v [S, d] per slot -> [S, D] (with autograd). One BLAS matrix-vector product per
    slot: a bmm with a trailing 1 took 1.8-2.0 ms for 5 x 2048 x 128 on the 2-core AMD machine, the
    loop of torch.mv 0.27 ms (1 thread, measured)."""
    return torch.stack([torch.mv(W[s], v[s]) for s in range(W.shape[0])])


def batch_variance(x: torch.Tensor) -> torch.Tensor:
    """x [B, d_in] -> the batch's total variance (a scalar, no grad): the FVU denominator.
    x [S, B, d_in] (a batch per seed) -> each seed's batch variance [S]."""
    with torch.no_grad():
        return (x - x.mean(-2, keepdim=True)).pow(2).sum(-1).mean(-1).clamp_min(1e-12)


@torch.no_grad()
def data_span_basis(x: torch.Tensor, share: float) -> torch.Tensor | None:
    """x [N, d_in] -> Q [d_in, r] (orthonormal columns, float32): the r leading principal
    directions of the centred x, r the fewest that hold >= `share` of its total variance.
    None when r = d_in: the span is the whole space and projecting onto it would change nothing.
    Computed in float64 from the [d_in, d_in] scatter matrix (eigh), accumulated over chunks of x
    so that no float64 copy of a large x is made."""
    mean = x.mean(0, dtype=torch.float64)
    scatter = sum((c.double() - mean).T @ (c.double() - mean) for c in x.split(65536))
    evals, evecs = torch.linalg.eigh(scatter)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    held = evals.cumsum(0) / evals.sum()  # [d_in] share of the variance in the first i + 1
    r = min(int((held < share).sum()) + 1, x.shape[1])
    return None if r == x.shape[1] else evecs[:, :r].float().contiguous()


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: argmin_m sum_n ||x_n - m||. x [N, d] -> [d] (float64 inside)."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-12)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() <= tol * max(1.0, float(m.norm())):
            m = m_new
            break
        m = m_new
    return m.float()


# data points mixed into each data-init row's jitter (husai's choice; StackedSAE.init_weights)
JITTER_POINTS = 4


class StackedSAE(nn.Module):
    """Base class: parameters, init, encode/decode. Subclasses define `activate` and the loss."""

    architecture = "base"
    unit_norm_decoder = True  # keep decoder rows unit-norm during training (Gao et al. sec. 2.3)
    # training: husai.sae.optim.KernelAdam applies it (set there)
    decoder_constraint_in_optimizer = False
    rescale = False
    """True (the TopK family with SAETrainConfig.decoder_norm "rescale"): decoder rows have free
    norms n [S, d_sae] while training; a latent's pre-activation is multiplied by its row's norm and
    decoded with the unit row, pre = ((x - b_dec) W_enc + b_enc) * n, x_hat = b_dec + z (W_dec / n)
    (SAELens's rescale_acts_by_decoder_norm). `fold_decoder_norms` turns such an SAE into the same
    function with unit rows, which training does when it ends; for unit rows both formulas agree."""
    normalized_mse = False  # reconstruction loss as FVU (see training_loss)

    def __init__(self, n_seeds: int, d_in: int, d_sae: int):
        super().__init__()
        self.n_seeds, self.d_in, self.d_sae = n_seeds, d_in, d_sae
        # The encoder is stored transposed, one row per latent (as sparsify's nn.Linear does):
        # the sparse gradient (husai.sae.sparse) then writes whole rows, the forward is one
        # [B, d_in] x [d_in, S * d_sae] matmul over all seeds, and Adam's fused kernel sees a
        # contiguous tensor. `W_enc` [S, d_in, d_sae] (SAELens's orientation) is a view of it.
        self.W_enc_T = nn.Parameter(torch.zeros(n_seeds, d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(n_seeds, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(n_seeds, d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(n_seeds, d_in))
        self.hparams: dict = {}  # constructor arguments beyond (n_seeds, d_in, d_sae)
        self._pre_buffer: torch.Tensor | None = None  # see pre_acts

    def decoder_norms(self) -> torch.Tensor:
        """||W_dec[s, j]|| [S, d_sae] (with autograd)."""
        return self.W_dec.norm(dim=-1).clamp_min(1e-12)

    def unit_decoder(self) -> torch.Tensor:
        """The decoder rows as they decode [S, d_sae, d_in]: W_dec, or W_dec / n when `rescale`."""
        return self.W_dec / self.decoder_norms().unsqueeze(-1) if self.rescale else self.W_dec

    def unit_encoder(self) -> torch.Tensor:
        """The encoder rows that go with unit_decoder [S, d_sae, d_in]: W_enc_T, or W_enc_T * n when
        `rescale`."""
        return self.W_enc_T * self.decoder_norms().unsqueeze(-1) if self.rescale else self.W_enc_T

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """With `rescale`: the same function with unit decoder rows, W_enc_T and b_enc times n,
        W_dec / n (SAELens folds the same way when it saves); the SAE is then an ordinary unit-row
        one (rescale off). A no-op otherwise."""
        if self.rescale:
            n = self.decoder_norms()
            self.W_enc_T.mul_(n.unsqueeze(-1))
            self.b_enc.mul_(n)
            self.W_dec.div_(n.unsqueeze(-1))
            self.rescale, self.unit_norm_decoder = False, True

    @property
    def W_enc(self) -> torch.Tensor:
        """[S, d_in, d_sae]: a view of the parameter W_enc_T [S, d_sae, d_in] (writes go
        through)."""
        return self.W_enc_T.transpose(1, 2)

    @torch.no_grad()
    def init_weights(
        self, seeds: list[int], b_dec_init: torch.Tensor, data: torch.Tensor | None = None
    ) -> "StackedSAE":
        """Gao et al. sec. 2.3: W_dec rows random unit vectors, W_enc = W_dec^T, b_enc = 0,
        b_dec = b_dec_init [d_in] (the geometric median of the data).

        data [N, d_in] (optional): draw each decoder row as a random centred data point
        u_n = (x_n - b_dec_init) / ||.|| instead of an isotropic direction. For low-rank
        activations (a grokked model's residual stream: ~20 directions hold 99.9% of the
        variance) isotropic latents mostly point out of the data subspace and never win a top-k.
        Rows that drew the same point must still differ, so each gets a jitter of norm 0.1, a
        unit-normalised Gaussian combination of JITTER_POINTS other random u's:

            w_j = u_{n_j} + 0.1 * J_j / ||J_j||,   J_j = sum_i c_ji u_{n_ji},  c ~ N(0, 1)

        then normalised. Every term is a data point, so the init is rotation-equivariant: data R
        and b_dec_init R give the rows times R (the same draws; husai.sae.optim explains why
        training needs that). The isotropic `randn` jitter it replaces was not, and left 0.9% of
        the rows' squared norm outside the 99.9% data span (now 0.1%). Measured on the grokked
        residual (TopK 16x k 32, 5 seeds, 20 epochs), old -> new jitter: adam EV 0.983 -> 0.984,
        decoder rows in the span 75% -> 83%; row_adam EV 0.988 -> 0.989, 90% -> 99%.
        With data None (init: random) the rows are isotropic Gaussian draws in the raw
        coordinates: equivariant in distribution only, never draw by draw.

        Each seed draws from its own CPU torch.Generator, so seed 42's SAE is the same whichever
        seeds are trained beside it, and on every device.
        """
        assert len(seeds) == self.n_seeds
        if data is not None:
            centred = data.cpu().float() - b_dec_init.cpu().float()  # [N, d_in]
            unit = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-8)
        for s, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            # drawn with data too, so that the rows' data points are those earlier versions drew
            W = torch.randn(self.d_sae, self.d_in, generator=gen)  # [d_sae, d_in]
            if data is not None:
                N = unit.shape[0]
                rows = unit[torch.randint(N, (self.d_sae,), generator=gen)]  # [d_sae, d_in]
                mix = unit[
                    torch.randint(N, (self.d_sae, JITTER_POINTS), generator=gen)
                ]  # [d_sae, m, d_in]
                J = torch.einsum(
                    "jm,jmd->jd", torch.randn(self.d_sae, JITTER_POINTS, generator=gen), mix
                )
                W = rows + 0.1 * J / J.norm(dim=1, keepdim=True).clamp_min(1e-8)
            W = W / W.norm(dim=1, keepdim=True)
            self.W_dec[s].copy_(W)
            self.W_enc_T[s].copy_(W)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec_init.to(self.b_dec).expand(self.n_seeds, -1))
        return self

    def pre_acts(self, x: torch.Tensor, reuse_buffer: bool = False, split_bias: bool = False):
        """x [B, d_in] (one batch for all seeds) or [S, B, d_in] (a batch per seed) ->
        pre-activations [S, B, d_sae].

        reuse_buffer (training steps, no autograd): write into a buffer kept on the module and
        overwritten by the next such call. A fresh 10 MB block per step is a fresh mmap whose page
        faults cost as much as the matmul's bias fill (measured: 1.3-2 ms of a 19 ms 5-seed step).

        Computed as x @ W_enc + (b_enc - b_dec @ W_enc), equal to (x - b_dec) @ W_enc + b_enc:
        x needs no gradient, so backward skips the [B, d_sae] x [d_sae, d_in] matmul that the
        centred form would spend on d(x - b_dec); b_dec's gradient comes from a matrix-vector.

        split_bias (no autograd, unit rows): -> (pre - bias, bias [S, d_sae]) with the matmul alone
        in the buffer: a consumer that reads every entry anyway adds the bias as it reads (TopK's
        selection kernels), which saves the matmul's bias fill, a pass over the block (0.6 of
        6.5 ms, measured).
        """
        S, d_in, d_sae = self.n_seeds, self.d_in, self.d_sae
        B = x.shape[-2]
        out = None
        if reuse_buffer and not torch.is_grad_enabled():
            buf = self._pre_buffer
            if (
                buf is None
                or buf.numel() < S * B * d_sae
                or buf.device != x.device
                or buf.dtype != x.dtype
            ):
                buf = self._pre_buffer = torch.empty(S * B * d_sae, dtype=x.dtype, device=x.device)
            out = buf[: S * B * d_sae]  # a prefix: contiguous (an epoch's last batch may be short)
        if split_bias and (torch.is_grad_enabled() or self.rescale):
            raise ValueError("split_bias: only for a no-grad pass with unit decoder rows")
        if x.ndim == 3 and not torch.is_grad_enabled():
            # the training steps' no-grad pass: centring x [S, B, d_in] is cheaper than
            # b_dec @ W_enc (0.7 ms of a 13 ms ReLU step at 2 threads, measured)
            xc, bias = x - self.b_dec.unsqueeze(1), self.b_enc
        else:
            xc, bias = x, self.b_enc - rows_times(self.W_enc_T, self.b_dec)  # [S, d_sae]
        if xc.ndim == 3:
            out = None if out is None else out.view(S, B, d_sae)
            pre = (
                torch.bmm(xc, self.W_enc, out=out)
                if split_bias
                else torch.baddbmm(bias.unsqueeze(1), xc, self.W_enc, out=out)
            )
        else:
            # A shared batch: one matmul for all seeds (measured 2.3 ms vs 2.9 ms for a bmm over
            # S = 5 copies of x). The result is [B, S, d_sae] in memory, returned as an
            # [S, B, d_sae] view.
            W = self.W_enc_T.reshape(S * d_sae, d_in)
            out = None if out is None else out.view(B, S * d_sae)
            pre = (
                torch.mm(xc, W.T, out=out)
                if split_bias
                else torch.addmm(bias.reshape(1, -1), xc, W.T, out=out)
            )
            pre = pre.view(-1, S, d_sae).transpose(0, 1)
        if split_bias:
            return pre, bias
        if not self.rescale:
            return pre
        n = self.decoder_norms().unsqueeze(1)  # [S, 1, d_sae]
        return pre.mul_(n) if not torch.is_grad_enabled() else pre * n

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        """pre [S, B, d_sae] -> latents z [S, B, d_sae] (non-negative)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] or [S, B, d_in] -> z [S, B, d_sae] (inference-time activation)."""
        return self.activate(self.pre_acts(x), training=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [S, B, d_sae] -> x_hat [S, B, d_in]."""
        return torch.baddbmm(self.b_dec.unsqueeze(1), z, self.unit_decoder())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] or [S, B, d_in] -> reconstruction x_hat [S, B, d_in]."""
        return self.decode(self.encode(x))

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        """Per-seed auxiliary/sparsity loss [S]; zero by default."""
        return x_hat.new_zeros(self.n_seeds)

    def training_loss(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x [B, d_in] (shared) or [S, B, d_in] (per seed), dead [S, d_sae] bool -> (sum over seeds
        of the loss, per-seed stats). With a batch per seed every batch statistic (the variance of
        the FVU) is that seed's own, so a seed's loss never depends on another seed's batch.

        MSE is per-sample squared error summed over d_in, averaged over the batch (SAELens's
        convention). With `normalized_mse` (TopK family) the reconstruction term is MSE divided
        by the batch's total variance, i.e. the fraction of variance unexplained, as in Gao et
        al. sec. 2.1 and sparsify: the AuxK term is normalised the same way, so its coefficient
        1/32 means the same thing whatever the scale of the activations.
        Stats (detached, shape [S]): loss, mse, l0, ev; plus fired [S, d_sae] (bool: the latent
        fired on some input of the batch).
        """
        return self.loss_from_pre(x, self.pre_acts(x), dead)

    def loss_from_pre(
        self, x: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """training_loss from its pre-activations pre [S, B, d_sae] (with their gradients)."""
        z = self.activate(pre, training=True)
        x_hat = self.decode(z)
        mse = (x_hat - x).pow(2).sum(-1).mean(1)  # [S]
        var = batch_variance(x)
        recon = mse / var if self.normalized_mse else mse
        loss = recon + self.sparsity_loss(x, pre, z, x_hat, dead)
        with torch.no_grad():
            stats = dict(
                loss=loss.detach(),
                mse=mse.detach(),
                l0=(z > 0).float().sum(-1).mean(1),
                ev=1 - mse.detach() / var,
                fired=(z > 0).any(1),
            )
        return loss.sum(), stats

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Drop the component of each decoder row's gradient parallel to the row (Gao et al.
        sec. 2.3), so the Adam step moves along the unit sphere rather than off it."""
        if (
            self.unit_norm_decoder
            and self.W_dec.grad is not None
            and not self.decoder_constraint_in_optimizer
        ):
            W, G = self.W_dec, self.W_dec.grad
            if G.is_contiguous() and kernels.usable(G, W):  # one pass (kernels.c)
                kernels.remove_parallel_(G, W.detach())
                return
            # vecdot: 0.68 ms for 5 x 2048 x 128 rows, einsum (a bmm of 1 x 1 products) 1.32 ms
            # (measured)
            G.addcmul_(torch.linalg.vecdot(G, W).unsqueeze(-1), W, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Renormalise decoder rows to unit norm after each step."""
        if self.unit_norm_decoder and not self.decoder_constraint_in_optimizer:
            if kernels.usable(self.W_dec):  # one pass (kernels.c)
                kernels.normalize_rows_(self.W_dec.data, 1e-8)
                return
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_rows(self, Q: torch.Tensor, renormalise: bool = False) -> None:
        """Rows of W_dec and W_enc_T [S, d_sae, d_in] <- rows Q Q^T, Q [d_in, r] orthonormal: each
        row's orthogonal projection onto span(Q) (the data span, SAETrainConfig.data_span), in
        place. renormalise: then divide both matrices' rows by the projected decoder row norms (the
        init: unit decoder rows, and W_enc = W_dec^T stays so)."""
        for W in (self.W_dec, self.W_enc_T):
            flat = W.view(-1, self.d_in)  # [S * d_sae, d_in]
            # two thin matmuls, 2 r / d_in of the work of one with Q Q^T (5 x 2048 rows, d_in 128,
            # r 21, 1 CPU thread: 6.4 vs 11 ms for both matrices, measured)
            torch.mm(flat @ Q, Q.T, out=flat)
        if renormalise:
            norms = self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            self.W_dec.div_(norms)
            self.W_enc_T.div_(norms)

    @torch.no_grad()
    def after_step(self, stats: dict) -> None:
        self.normalize_decoder()

    def slot_hparams(self, slots: list[int]) -> dict:
        """The constructor arguments of an SAE holding only these slots (TopK family: per-slot
        k)."""
        return dict(self.hparams)

    def subset(self, slots: list[int]) -> "StackedSAE":
        """A copy holding only these seed slots, in this order (e.g. one cell of many trained at
        once), on the device the stack is on."""
        part = type(self)(len(slots), self.d_in, self.d_sae, **self.slot_hparams(slots)).to(
            self.W_dec.device
        )
        idx = torch.tensor(slots, dtype=torch.long)
        part.load_state_dict(
            {
                k: v.detach().index_select(0, idx.to(v.device)).clone()
                for k, v in self.state_dict().items()
            }
        )
        return part

    def select(self, s: int) -> "StackedSAE":
        """A copy holding only seed slot s (S = 1), e.g. to save or evaluate one seed."""
        return self.subset([s])


class PenalisedSAE(StackedSAE):
    """An SAE whose sparsity comes from a penalty weight (ReLU: L1, JumpReLU: L0), one per seed slot
    (`coeff` [S]), so that one pass can train several weights side by side (husai.sae.calibrate).
    The constructor takes the weight as one number or as a list with one per slot."""

    coeff_name: str
    """The hyper-parameter that holds the weight (l1_coeff, l0_coeff)."""

    def _set_coeff(self, n_seeds: int, value: float | list[float]) -> None:
        values = list(value) if isinstance(value, (list, tuple)) else [float(value)] * n_seeds
        if len(values) != n_seeds:
            raise ValueError(
                f"{self.coeff_name}: one value per seed slot, got {len(values)} for {n_seeds}"
            )
        # not in the state dict: it travels as a hyper-parameter (slot_hparams, cfg.json)
        self.register_buffer("coeff", torch.tensor(values, dtype=torch.float32), persistent=False)

    def slot_hparams(self, slots: list[int]) -> dict:
        vals = [float(self.coeff[s]) for s in slots]
        return dict(self.hparams, **{self.coeff_name: vals[0] if len(set(vals)) == 1 else vals})
