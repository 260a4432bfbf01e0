"""Dead-latent resampling (Bricken et al. 2023, "Towards Monosemanticity", section on neuron
resampling): give every dead latent a new start where the SAE reconstructs worst.

At the end of each epoch in SAETrainConfig.resample_dead, for each seed slot s:

    err_n   = ||x_n - x_hat_n||^2 over all N inputs (the slot's current SAE)
    pick    one input per dead latent, without replacement, with probability ~ err_n^2
    u       = (x_n - b_dec) / ||x_n - b_dec||                          [d_in], a data direction
    W_dec,j = u;  W_enc,j = u * 0.2 * (mean norm of the live encoder rows);  b_enc,j = 0
    Adam's first moments of those rows are zeroed, their second moments set to the live rows' mean.

JumpReLU latents also get their threshold back to the initial one. Every quantity comes from data
points and norms, so resampling keeps training rotation-equivariant (husai.sae.optim). The picks
are drawn from a generator seeded by (seed, epoch): the same run resamples the same way.

Why: a ReLU SAE whose L1 weight is raised early (target_l0) loses latents that never fire again;
without this, 16x ReLU SAEs on the grokked model ended 25-73% dead (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import torch

from husai.sae.metrics import reconstruct

RESAMPLE_KEY = 0x7265736D  # "resm": first entropy word of the picks' SeedSequence
ENCODER_SCALE = 0.2
"""New encoder rows: this times the mean norm of the live encoder rows (Bricken et al.)."""


def resample_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([RESAMPLE_KEY, int(seed) + 2**63, epoch]).generate_state(
        2, np.uint32
    )
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@torch.no_grad()
def resample_dead(
    sae,
    opt: torch.optim.Optimizer,
    acts: torch.Tensor,
    dead: torch.Tensor,
    seeds: list[int],
    epoch: int,
) -> list[int]:
    """Resample the latents marked in dead [S, d_sae] (bool) of the stacked sae, trained by opt, on
    acts [N, d_in]; returns how many latents each slot got back."""
    counts = dead.sum(1).tolist()
    if not any(counts):
        return counts
    x_hat, _, _ = reconstruct(sae, acts)  # [S, N, d_in]
    err = (x_hat - acts).pow(2).sum(-1).double()  # [S, N]
    for s, n in enumerate(counts):
        if n == 0:
            continue
        j = dead[s].nonzero().squeeze(1)
        weights = err[s].square().cpu() + 1e-30  # every input stays possible, even at zero error
        picks = torch.multinomial(
            weights, n, replacement=False, generator=resample_generator(seeds[s], epoch)
        )
        u = acts[picks.to(acts.device)] - sae.b_dec[s]
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n, d_in]
        live = ~dead[s]
        enc_norm = (
            sae.W_enc_T[s][live].norm(dim=-1).mean() if bool(live.any()) else torch.tensor(1.0)
        )
        sae.W_dec[s, j] = u
        sae.W_enc_T[s, j] = u * (ENCODER_SCALE * enc_norm)
        sae.b_enc[s, j] = 0.0
        if hasattr(sae, "log_threshold"):  # JumpReLU: back to the initial threshold
            sae.log_threshold[s, j] = float(np.log(sae.hparams["init_threshold"]))
        for p in (sae.W_dec, sae.W_enc_T, sae.b_enc, getattr(sae, "log_threshold", None)):
            state = opt.state.get(p, {}) if p is not None else {}
            if "exp_avg" in state:
                state["exp_avg"][s, j] = 0.0
                # the step count is shared, so a zeroed second moment gets no bias correction and
                # the first steps would be ~30x lr (measured: resampled ReLU latents died within an
                # epoch); the live rows' mean second moment gives them ordinary steps instead
                v = state["exp_avg_sq"][s]
                v[j] = v[live].mean(0) if bool(live.any()) else v.mean(0)
    return counts
