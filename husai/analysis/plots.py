"""PNG figures for `husai compare --plots DIR`: a seed-by-seed stability heatmap and a per-seed
histogram of latent frequencies. Matplotlib's Agg backend (no display needed); files are rendered to
memory and written atomically through husai.io."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never touch a display, whatever the user's MPLBACKEND says
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from husai.io import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def stability_heatmap(
    matrix,
    labels: list[str],
    path: str | Path,
    title: str,
    null_mean: float | None = None,
    null_name: str = "null mean",
) -> Path:
    """Heatmap of an [N, N] pairwise matrix (e.g. PW-MCC), each cell annotated; the colour scale
    runs from the null mean (or 0) to 1 so that "no better than chance" reads as the bottom of the
    scale."""
    M = np.asarray(matrix, dtype=float)
    N = M.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * N, 0.8 + 0.55 * N))
    lo = min(null_mean if null_mean is not None else 0.0, float(np.nanmin(M)))
    im = ax.imshow(M, vmin=lo, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(N), labels, rotation=45, ha="right")
    ax.set_yticks(range(N), labels)
    if N <= 16:
        for i in range(N):
            for j in range(N):
                ax.text(
                    j,
                    i,
                    f"{M[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if M[i, j] < (lo + 1) / 2 else "black",
                )
    sub = f" ({null_name} {null_mean:.3f})" if null_mean is not None else ""
    ax.set_title(title + sub, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def frequency_histogram(
    counts: list[dict], labels: list[str], key_freqs: list[int], p: int, path: str | Path
) -> Path:
    """Grouped bars: for each seed, the number of pure latents at each frequency 1..(p-1)/2.

    counts: per seed {frequency: n pure latents}; key frequencies are shaded so latents on non-key
    frequencies stand out."""
    K = (p - 1) // 2
    freqs = np.arange(1, K + 1)
    N = len(counts)
    fig, ax = plt.subplots(figsize=(max(6.0, K * 0.15), 3.2))
    for k in key_freqs:
        ax.axvspan(k - 0.5, k + 0.5, color="0.9", zorder=0)
    width = 0.8 / max(N, 1)
    for s, (c, lab) in enumerate(zip(counts, labels)):
        ax.bar(
            freqs - 0.4 + width * (s + 0.5),
            [c.get(int(k), c.get(str(k), 0)) for k in freqs],
            width,
            label=lab,
        )
    ax.set_xlabel("frequency k (shaded: model's key frequencies)")
    ax.set_ylabel("pure latents (purity >= 0.85)")
    ax.set_xlim(0.5, K + 0.5)
    if N <= 12:
        ax.legend(fontsize=7, ncol=min(N, 5))
    return _save(fig, path)
