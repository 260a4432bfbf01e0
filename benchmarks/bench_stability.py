"""Benchmark of the stability analysis (its speed targets: BENCHMARKS.md, "Stability analysis").

    python benchmarks/bench_stability.py [--d-sae 2048] [--d-in 128] [--seeds 10] [--k 32]
                                         [--threads 1] [--repeats 3] [--json OUT]

Measures, on synthetic dictionaries (no trained model needed):
  1. Hungarian matching (PW-MCC) of two d_sae-latent dictionaries: independent random ones (the
     hardest case for the assignment solver) and "trained-like" ones (a shared dictionary plus
     noise, so most latents have a clear partner). Target: well under 1 s at d_sae = 2048.
  2. A full N-seed comparison in the data metric, as `husai compare` runs it
     (husai.analysis.agreement.seed_agreement): for each of the N(N-1)/2 seed pairs the atom level
     (decoder and encoder Hungarian, shared fraction, reappearance), the activation level (latents
     matched by activation correlation over 4096 inputs, TopK codes with k active) and one draw of
     the isotropic and matched-geometry nulls; the symmetry null needs a model's input grid and is
     not timed here (it adds one more pair comparison per pair). Target: < 60 s for 10 seeds.
Prints one JSON object (also written to --json OUT).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from husai.analysis.agreement import seed_agreement, seed_view  # noqa: E402
from husai.analysis.data_span import data_span  # noqa: E402
from husai.analysis.nulls import isotropic_dictionary  # noqa: E402
from husai.analysis.stability import cosine_matrix, hungarian  # noqa: E402


def _time(fn, repeats: int) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def trained_like(base: torch.Tensor, seed: int, noise: float = 0.5) -> torch.Tensor:
    """A seed's dictionary: the shared atoms plus isotropic noise (cos to base ~
    1/sqrt(1 + noise^2)), shuffled."""
    g = torch.Generator().manual_seed(seed)
    D = base + noise * isotropic_dictionary(*base.shape, seed + 10_000)
    return D[torch.randperm(D.shape[0], generator=g)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    A, B = isotropic_dictionary(a.d_sae, a.d_in, 1), isotropic_dictionary(a.d_sae, a.d_in, 2)
    base = isotropic_dictionary(a.d_sae, a.d_in, 3)
    S1, S2 = trained_like(base, 4), trained_like(base, 5)
    t_cos, C = _time(lambda: cosine_matrix(A, B), a.repeats)
    t_rand, (_, _, v) = _time(lambda: hungarian(C), a.repeats)
    C2 = cosine_matrix(S1, S2)
    t_like, (_, _, v2) = _time(lambda: hungarian(C2), a.repeats)

    decs = [trained_like(base, 100 + s) for s in range(a.seeds)]
    encs = [trained_like(base, 200 + s) for s in range(a.seeds)]
    acts = torch.randn(
        4096, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    ) @ torch.randn(
        16, a.d_in, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    )  # rank-16 activations
    span = data_span(acts)

    def codes(E):  # TopK codes of every input: [4096, d_sae], k active per row
        pre = acts @ E.T
        vals, idx = pre.topk(a.k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))

    t0 = time.perf_counter()
    views = [seed_view(str(s), D, E, span, codes(E)) for s, (D, E) in enumerate(zip(decs, encs))]
    t_views = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = seed_agreement(views)
    t_pairs = time.perf_counter() - t0

    out = dict(
        machine=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            threads=a.threads,
            cpu=platform.processor() or platform.machine(),
        ),
        d_in=a.d_in,
        d_sae=a.d_sae,
        seeds=a.seeds,
        k=a.k,
        span_dim=int(span.basis.shape[1]),
        cosine_matrix_s=round(t_cos, 4),
        hungarian_random_s=round(t_rand, 4),
        hungarian_random_pw_mcc=round(float(v.mean()), 4),
        hungarian_trained_like_s=round(t_like, 4),
        hungarian_trained_like_pw_mcc=round(float(v2.mean()), 4),
        encode_s=round(t_views, 2),
        compare_s=round(t_pairs, 2),
        compare_total_s=round(t_views + t_pairs, 2),
        pw_mcc_dec=round(res["levels"]["pw_mcc_dec"]["value"], 4),
        pw_mcc_dec_ci=[round(c, 4) for c in res["levels"]["pw_mcc_dec"]["ci"]],
        null_isotropic_pw_mcc=round(res["levels"]["pw_mcc_dec"]["nulls"]["isotropic"]["value"], 4),
        null_matched_geometry_pw_mcc=round(
            res["levels"]["pw_mcc_dec"]["nulls"]["matched_geometry"]["value"], 4
        ),
    )
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
