"""What the machine can give a job: the memory check that refuses a job up front instead of letting
the OS kill it mid-run."""

from __future__ import annotations

from husai.errors import HusaiError


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


def check_fits_in_memory(
    n_bytes: int, what: str, device: str = "cpu", hint: str | None = None
) -> None:
    """Refuse up front (HusaiError) a job whose memory need exceeds what is available, instead of
    letting the OS kill the process mid-run with no message."""
    avail = available_memory(device)
    if avail is not None and n_bytes > avail:
        # The free amount is left out of the message on purpose: it changes from moment to moment,
        # and the same bad input should give the same one-line error.
        raise HusaiError(
            f"{what} needs at least {n_bytes / 2**30:.1f} GiB, more than is available on {device}; "
            f"{hint or oom_hint()}"
        )
