"""End-to-end wall time of `husai train-model --preset fast` (target: under 30 s on 2 cores).

    python benchmarks/bench_fast_preset.py [--seeds 0,1,2] [--threads 2]

Runs the CLI once per seed into a temporary folder, one seed at a time, and prints what each run
reached (epochs to grok, to clean, the memorised control's epoch) and the Fourier structure the
study relies on (key frequencies, single-frequency neuron fraction). Wall time is the whole
command, interpreter start-up included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    walls = []
    print("seed  wall_s  epochs  grokked  clean  memorised  test_acc  single_freq  key_frequencies")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            out = Path(tmp) / f"seed{seed}"
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "husai.cli",
                    "train-model",
                    "--preset",
                    "fast",
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                ],
                check=True,
                capture_output=True,
            )
            walls.append(time.perf_counter() - t0)
            m = json.loads((out / "metrics.json").read_text())
            print(
                f"{seed:>4}  {walls[-1]:6.1f}  {m['epochs_trained']:6d}  "
                f"{m['grokked_epoch']!s:>7}  {m['clean_epoch']!s:>5}  {m['memorised_epoch']!s:>9}  "
                f"{m['test_acc']:8.4f}  {m['frac_neurons_single_freq']:11.3f}  "
                f"{m['key_frequencies']}"
            )
    print(
        f"mean wall {statistics.mean(walls):.1f} s over {len(walls)} seed(s), "
        f"{args.threads} thread(s), {args.device}"
    )


if __name__ == "__main__":
    main()
