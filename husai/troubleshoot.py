"""What to try when something falls short: the plan's troubleshooting guide, as code.

Each function takes measured figures and returns a list of hints (empty when all is well). The
doctor prints them under a failed check; train-model and train-sae print them after a run.
"""

from __future__ import annotations

from .sae import K_ARCHITECTURES

GROKKED_ACC = 0.95
DEAD_MAX = 0.30
OVERLAP_MIN = 0.3
KEY_WEIGHT_MIN = 0.5


def model_hints(test_acc: float, frac_single: float | None = None) -> list[str]:
    hints = []
    if test_acc < GROKKED_ACC:
        hints.append(f"model not grokked (test accuracy {test_acc:.1%} < {GROKKED_ACC:.0%}): train longer "
                     "(--epochs) or use the fast preset (husai train-model --preset fast)")
    elif frac_single is not None and frac_single < 0.5:
        hints.append(f"model grokked but its circuit is not clean yet ({frac_single:.0%} single-frequency neurons): "
                     "train longer so weight decay finishes the clean-up (Nanda et al. 2023, section 5)")
    return hints


def sae_hints(architecture: str, k: int | None, l0: float, frac_dead: float, fourier_overlap: float | None = None,
              explained_variance: float | None = None, key_weight_frac: float | None = None) -> list[str]:
    """key_weight_frac: mean fraction of live decoder-row norm inside the key-frequency subspaces.

    Fourier overlap (mean activation purity) is bounded for sparse latents: a latent firing on part
    of a phase cycle spreads its variance over harmonics (ReLU(cos) scores 0.84, narrower firing
    0.26), so a trained 16x TopK SAE scores ~0.03 while its decoder lies ~70% in the key-frequency
    subspaces. The Fourier hint therefore fires only when the weights do not show the structure either.
    """
    hints = []
    if architecture in K_ARCHITECTURES and k and not 0.5 * k <= l0 <= 1.1 * k:
        hints.append(f"L0 {l0:.1f} is far from k = {k}: check the TopK configuration (k, expansion; TopK then ReLU "
                     "can only lower L0 when pre-activations are negative, so a tiny L0 means a bad b_enc/b_dec init)")
    if frac_dead > DEAD_MAX:
        hints.append(f"{frac_dead:.0%} dead latents (> {DEAD_MAX:.0%}): keep AuxK on (aux_coeff 1/32, Gao et al. A.2) "
                     "and lower the learning rate (--lr)")
    if fourier_overlap is not None and fourier_overlap < OVERLAP_MIN and (key_weight_frac is None or key_weight_frac < KEY_WEIGHT_MIN):
        weights = "" if key_weight_frac is None else f" and only {key_weight_frac:.0%} of decoder weight lies in the key-frequency subspaces"
        hints.append(f"Fourier overlap {fourier_overlap:.2f} < {OVERLAP_MIN}{weights}: verify the model grokked "
                     "(husai analyze-model) and train the SAE longer (--epochs)")
    if explained_variance is not None and explained_variance < 0.5:
        hints.append(f"explained variance {explained_variance:.2f} is low: train longer or raise k / expansion")
    return hints


def oom_hint() -> str:
    return "out of memory: use a smaller --batch-size or --expansion (or run on a larger device)"


def available_memory(device: str = "cpu") -> int | None:
    """Bytes the process can still allocate on `device` (MemAvailable, or the cgroup limit if lower;
    free memory for CUDA). None when unknown."""
    if str(device).startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except Exception:
            return None
    avail = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read().strip())
        if limit != "max":
            avail = min(avail or 2**63, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def check_fits_in_memory(n_bytes: int, what: str, device: str = "cpu", hint: str | None = None) -> None:
    """Refuse up front (HusaiError) a job whose memory need exceeds what is available, instead of
    letting the OS kill the process mid-run with no message."""
    from .errors import HusaiError

    avail = available_memory(device)
    if avail is not None and n_bytes > avail:
        # The free amount is left out of the message on purpose: it changes from moment to moment,
        # and the same bad input should give the same one-line error.
        raise HusaiError(f"{what} needs at least {n_bytes / 2**30:.1f} GiB, more than is available on {device}; "
                         f"{hint or oom_hint()}")
