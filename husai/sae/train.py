"""Train S SAEs (one per seed) on the same activations in one pass.

Each seed's initial weights come from its own generator
(husai.sae.architectures.StackedSAE.init_weights) and, by default, its batch order too (`data_seed`
None: a batch x [S, B, d_in]); an integer `data_seed` gives all seeds one shared order
(x [B, d_in]). The loss is a sum of per-seed terms, so training seeds [42, 123] together gives the
same SAE for 42 as training [42] alone (tests/sae/test_sae_train.py checks both this and bitwise
determinism).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from husai.errors import HusaiError
from husai.model.data import check_seed
from husai.resources import check_fits_in_memory
from husai.sae.activations import check_informative
from husai.sae.base import PenalisedSAE, StackedSAE, data_span_basis, geometric_median
from husai.sae.config import SAETrainConfig
from husai.sae.optim import make_optimizer
from husai.sae.resample import resample_dead


def build_sae(
    cfg: SAETrainConfig, n_seeds: int, d_in: int, knobs: list | None = None
) -> StackedSAE:
    """knobs: one value of the family's sparsity key per slot instead of the config's (k for the
    TopK family: cells that differ only in k, husai.sae.cells; the penalty weight for ReLU /
    JumpReLU: husai.sae.calibrate)."""
    return cfg.build(n_seeds, d_in, knobs)


@dataclass
class TrainResult:
    sae: StackedSAE
    """The trained SAEs, seed slot s = seeds[s] (the last good weights if training diverged)."""
    seeds: list[int]
    W_dec_init: torch.Tensor
    """[S, d_sae, d_in] decoder at initialisation (for cosine_to_init)."""
    steps: int
    wall_seconds: float
    diverged_at_step: int | None = None
    history: list[dict] = field(default_factory=list)
    """One row per epoch: epoch, step, loss, mse, l0, ev, frac_dead (lists over seeds)."""
    trajectory: dict[int, dict] = field(default_factory=dict)
    """epoch -> {"W_dec", "W_enc_T": [S, d_sae, d_in] float32 copies, "live": [S, d_sae] bool (fired
    during that epoch; all True at epoch 0, the init)}, for the epochs in cfg.trajectory_epochs."""
    converged: bool | None = None
    """With cfg.converge_ev: whether the rule stopped training before the epoch cap (False: the
    cap came first). None: no rule (fixed epochs)."""


def converged(history: list[dict], tol: float, window: int) -> bool:
    """The convergence rule (SAETrainConfig.converge_ev) on a training history: for every seed,
    ev[-1] - ev[-1 - window] < tol and frac_dead[-1] >= frac_dead[-1 - window] - 1e-9 (dead
    latents no longer being revived: a dead fraction still falling means AuxK or the gradient is
    still bringing latents back, the under-training a fixed epoch count hides). The EV is each
    epoch's mean over its training batches, so it lags the weights by half an epoch; the window
    smooths its batch noise. False with fewer than window + 1 epochs."""
    if len(history) <= window:
        return False
    now, then = history[-1], history[-1 - window]
    return all(a - b < tol for a, b in zip(now["ev"], then["ev"])) and all(
        a >= b - 1e-9 for a, b in zip(now["frac_dead"], then["frac_dead"])
    )


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise HusaiError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise HusaiError("--seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise HusaiError(f"--seeds has duplicates: {text}")
    for s in seeds:
        check_seed(s, "every SAE seed")
    return seeds


def init_saes(
    acts: torch.Tensor,
    cfg: SAETrainConfig,
    seeds: list[int],
    device: str = "cpu",
    b_dec: torch.Tensor | None = None,
) -> StackedSAE:
    """The SAEs exactly as training starts them, from acts [N, d_in] (with cfg.data_span, rows
    projected onto the data span). Also the untrained-SAE null of `husai compare`, which must be the
    architecture's real init (README, "Nulls that fit the geometry"). b_dec: initial_b_dec(acts),
    when the caller already has it (it depends on the data alone; ~0.5 s at [12769, 512]). With
    decoder_norm rescale it comes folded to unit rows, as a trained SAE does (the same function)."""
    sae = _init(acts, cfg, seeds, device, b_dec=b_dec)[0]
    sae.fold_decoder_norms()
    return sae


def _sample(acts: torch.Tensor) -> torch.Tensor:
    """The rows the init reads: all of acts [N, d_in], or a fixed subsample of 8192."""
    N = acts.shape[0]
    return (
        acts
        if N <= 8192
        else acts[
            torch.randperm(N, generator=torch.Generator().manual_seed(0))[:8192].to(acts.device)
        ]
    )


def initial_b_dec(acts: torch.Tensor) -> torch.Tensor:
    """b_dec at init: the geometric median of (a fixed subsample of) the data
    (Gao et al. sec. 2.3)."""
    return geometric_median(_sample(acts.to(torch.float32)).cpu())


def _init(
    acts,
    cfg: SAETrainConfig,
    seeds: list[int],
    device,
    knobs=None,
    b_dec: torch.Tensor | None = None,
    start: dict | None = None,
) -> tuple[StackedSAE, torch.Tensor | None]:
    """-> (the initial SAEs, Q [d_in, r] the data-span basis or None when cfg.data_span is off).
    start: {"W_dec": [S, m, d_in] unit rows, m <= d_sae, "b_dec": [d_in], optionally
    "b_enc": [S, m]}: the first m decoder rows and their encoder rows (tied) set to these, b_dec
    (and those rows' b_enc) to these (husai.analysis.optimisation_gap's runs from the truth); the
    other rows keep the config's init."""
    N, d_in = acts.shape
    for s in seeds:
        check_seed(s, "every SAE seed")
    d_sae, B = cfg.d_sae(d_in), min(cfg.batch_size, N)
    # weights, gradients and Adam state (x4) of W_enc and W_dec, their trajectory copies, plus a
    # batch's [B, d_sae] pre-activations
    snaps = len([e for e in cfg.trajectory_epochs if e < cfg.epochs])
    need = 4 * len(seeds) * ((4 + snaps) * 2 * d_in * d_sae + 6 * B * d_sae)
    check_fits_in_memory(need, f"{len(seeds)} SAE(s) with d_sae = {d_sae}", str(device))
    acts = acts.to(device=device, dtype=torch.float32)
    sample = _sample(acts)
    sae = (
        build_sae(cfg, len(seeds), d_in, knobs)
        .to(device)
        .init_weights(
            seeds,
            initial_b_dec(acts) if b_dec is None else b_dec,
            sample.cpu() if cfg.init == "data" else None,
        )
    )
    if cfg.b_dec_init == "zeros":  # SAELens's; data init's rows stay centred on the median
        with torch.no_grad():
            sae.b_dec.zero_()
    if start is not None:
        with torch.no_grad():
            m = start["W_dec"].shape[1]
            sae.W_dec[:, :m].copy_(start["W_dec"])
            sae.W_enc_T[:, :m].copy_(start["W_dec"])
            sae.b_dec.copy_(start["b_dec"].to(sae.b_dec).expand_as(sae.b_dec))
            if "b_enc" in start:
                sae.b_enc[:, :m].copy_(start["b_enc"])
    Q = None if cfg.data_span is None else data_span_basis(acts, cfg.data_span)
    if Q is not None:
        sae.project_rows(Q, renormalise=True)
    if (
        cfg.decoder_init_norm != 1
    ):  # decoder_norm rescale only (validate): SAELens's small initial rows
        with torch.no_grad():
            sae.W_dec.mul_(cfg.decoder_init_norm)
            sae.W_enc_T.mul_(cfg.decoder_init_norm)
    return sae, Q


DATA_ORDER_KEY = 0x64617461  # "data": second entropy word of each seed's data-order SeedSequence


def data_order_rng(seed: int) -> np.random.Generator:
    """Seed `seed`'s batch-order generator (SAETrainConfig.data_seed null): numpy's PCG64 from
    SeedSequence([DATA_ORDER_KEY, seed + 2^63]), one-to-one in the seed over check_seed's range.
    A different algorithm from the init's torch (mt19937) generator, so the order can never
    replay any seed's init stream (torch's CPU generator keeps only a seed's low 32 bits: a
    torch generator from a derived seed could)."""
    return np.random.default_rng(np.random.SeedSequence([DATA_ORDER_KEY, int(seed) + 2**63]))


def _batch_orders(N: int, cfg: SAETrainConfig, seeds: list[int], device):
    """One call per epoch -> input order [N] (shared, data_seed set) or [S, N] (one per seed)."""
    if cfg.data_seed is not None:
        gen = torch.Generator().manual_seed(cfg.data_seed)
        return lambda: torch.randperm(N, generator=gen).to(device)
    rngs = [data_order_rng(s) for s in seeds]
    return lambda: torch.from_numpy(np.stack([r.permutation(N) for r in rngs])).to(device)


@torch.no_grad()
def _snapshot(sae: StackedSAE, live: torch.Tensor) -> dict:
    """The weights as the SAE's function has them: with decoder_norm rescale, folded to unit
    rows."""
    return dict(
        W_dec=sae.unit_decoder().float().clone(),
        W_enc_T=sae.unit_encoder().float().clone(),
        live=live.clone(),
    )


def train_saes(
    acts: torch.Tensor,
    cfg: SAETrainConfig,
    seeds: list[int],
    device: str = "cpu",
    on_step=None,
    on_epoch=None,
    knobs: list | None = None,
    start: dict | None = None,
    freeze_decoder: bool | list[bool] = False,
) -> TrainResult:
    """Train len(seeds) SAEs on acts [N, d_in]. on_step(step, total, stats) and on_epoch(row) are
    optional callbacks (progress bar, W&B). knobs: see build_sae; start: see _init; freeze_decoder:
    the decoder (W_dec and b_dec) keeps its initial values (put back after every step), only the
    encoder, b_enc and the thresholds learn; a list: per seed slot (husai.analysis.optimisation_gap:
    an oracle decoder with the family's encoder)."""
    # Adam state under weight decay goes denormal (BENCHMARKS.md, "Model training step")
    torch.set_flush_denormal(True)
    N, d_in = acts.shape
    cfg.validate(d_in)
    check_informative(acts)
    S = len(seeds)
    acts = acts.to(device=device, dtype=torch.float32)
    sae, span = _init(acts, cfg, seeds, device, knobs, start=start)
    W_dec_init = sae.unit_decoder().detach().clone()  # unit rows, as the trained SAE's are compared
    frozen = torch.tensor(
        freeze_decoder if isinstance(freeze_decoder, list) else [bool(freeze_decoder)] * S,
        device=device,
    )
    W_dec_frozen, b_dec_frozen = (
        sae.W_dec.detach()[frozen].clone(),
        sae.b_dec.detach()[frozen].clone(),
    )
    # with a data span the rows are projected between the update and the renormalisation
    opt = make_optimizer(
        sae,
        cfg.optimizer,
        cfg.learning_rate(d_in),
        (cfg.beta1, cfg.beta2),
        constrain_decoder=span is None,
    )
    next_order = _batch_orders(N, cfg, seeds, device)
    record = {e for e in cfg.trajectory_epochs if e < cfg.epochs}
    trajectory = (
        {0: _snapshot(sae, torch.ones(S, sae.d_sae, dtype=torch.bool, device=device))}
        if 0 in record
        else {}
    )
    since_fired = torch.zeros(
        S, sae.d_sae, device=device
    )  # inputs seen since each latent last fired
    dead_after = max(1, math.ceil(cfg.dead_after_epochs * N))
    n_batches = math.ceil(N / cfg.batch_size)
    total, step, history, diverged = cfg.epochs * n_batches, 0, [], None
    last_good = {k: v.clone() for k, v in sae.state_dict().items()}
    t0 = time.perf_counter()
    stopped = False  # by the convergence rule
    for epoch in range(cfg.epochs):
        perm = next_order()  # [N] or [S, N]
        sums = torch.zeros(4, S, device=device)
        fired_epoch = torch.zeros(S, sae.d_sae, dtype=torch.bool, device=device)
        for i in range(0, N, cfg.batch_size):
            idx = perm[..., i : i + cfg.batch_size]
            x = acts.index_select(0, idx.reshape(-1)).view(
                *idx.shape, d_in
            )  # [(S,) B, d_in]; acts[idx]: 5x slower
            loss, stats = sae.training_loss(x, since_fired >= dead_after)
            if not bool(torch.isfinite(stats["loss"]).all()):
                diverged = step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grads()
            opt.step()
            if (
                span is not None
            ):  # back into the data span; after_step then renormalises decoder rows
                sae.project_rows(span)
            sae.after_step(stats)
            if W_dec_frozen.shape[0]:  # last: a renormalisation would move the rows by rounding
                with torch.no_grad():
                    sae.W_dec[frozen] = W_dec_frozen
                    sae.b_dec[frozen] = b_dec_frozen
            fired = stats["fired"]
            fired_epoch |= fired
            since_fired = torch.where(
                fired, torch.zeros_like(since_fired), since_fired + x.shape[-2]
            )
            sums += torch.stack([stats["loss"], stats["mse"], stats["l0"], stats["ev"]])
            step += 1
            if on_step is not None:
                on_step(step, total, stats, (since_fired >= dead_after).float().mean(1))
        if diverged is None and not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
            diverged = step
        if diverged is not None:
            sae.load_state_dict(
                last_good
            )  # keep the last good checkpoint (end of the previous epoch)
            break
        last_good = {k: v.clone() for k, v in sae.state_dict().items()}
        if epoch + 1 in cfg.resample_dead and epoch + 1 < cfg.epochs:
            dead = since_fired >= dead_after
            resampled = resample_dead(sae, opt, acts, dead, seeds, epoch + 1)
            since_fired = torch.where(dead, torch.zeros_like(since_fired), since_fired)
        if epoch + 1 in record:
            trajectory[epoch + 1] = _snapshot(sae, fired_epoch)
        means = (sums / n_batches).tolist()
        row = dict(
            epoch=epoch + 1,
            step=step,
            loss=means[0],
            mse=means[1],
            l0=means[2],
            ev=means[3],
            frac_dead=(since_fired >= dead_after).float().mean(1).tolist(),
        )
        if epoch + 1 in cfg.resample_dead and epoch + 1 < cfg.epochs:
            row["resampled"] = resampled
        if isinstance(sae, PenalisedSAE):
            row["sparsity_coeff"] = sae.coeff.tolist()
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if cfg.converge_ev is not None and converged(history, cfg.converge_ev, cfg.converge_window):
            stopped = True
            break
    sae.fold_decoder_norms()  # decoder_norm rescale: the same SAE with unit rows (a no-op for unit)
    sae._pre_buffer = None  # the training steps' scratch buffer (StackedSAE.pre_acts)
    # the optimizer is gone: the SAE's own steps apply it again
    sae.decoder_constraint_in_optimizer = False
    return TrainResult(
        sae,
        list(seeds),
        W_dec_init,
        step,
        time.perf_counter() - t0,
        diverged,
        history,
        trajectory,
        converged=stopped if cfg.converge_ev is not None else None,
    )
