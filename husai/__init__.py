"""husai: do sparse autoencoders learn real, reproducible features?

Answered on a small transformer that has grokked modular addition, whose true features
(a handful of Fourier frequencies) are known. See README.md.

The pipeline, one subpackage per stage; imports run one way, from the top of this list down:

    husai.cli        the `husai` command: one thin module per command group
    husai.study      config, runner and executors, results table, report
    husai.analysis   latents vs the Fourier ground truth, stability, nulls, comparison of SAEs
    husai.sae        architectures, training, metrics, activations, SAELens-format files
    husai.model      data, the transformer, its training, its Fourier analysis, and a run
                     loaded into the installed TransformerLens (3.x or 4.x; husai.model.interop)
    husai.*          plumbing: errors, io (atomic writes), outputs (what may be written where),
                     interrupts (Ctrl-C), resources (memory), wandb_log

The names users type import from here and from their subpackage (`from husai import
compute_pwmcc`, `from husai.sae import train_saes`); each loads its module on first use.
"""

from husai.interrupts import guard_startup as _guard_startup

# Before the seconds-long torch import: a Ctrl-C while the `husai` command starts must not print
# a traceback (husai.interrupts).
_guard_startup()

import torch as _torch  # noqa: E402

from husai._exports import lazy as _lazy  # noqa: E402

__version__ = "0.1.0"

# AdamW with weight decay 1.0 drives weights and optimizer state into denormal floats, which make
# every elementwise op many times slower on CPUs. Flushing must be switched on here, at import,
# before torch starts its OpenMP pool: worker threads copy the floating-point mode (MXCSR) of the
# thread that creates them, and torch.set_flush_denormal only changes the calling thread. Set
# later, it left the second of two threads computing with denormals (3x slower steps, measured).
_torch.set_flush_denormal(True)

_EXPORTS = {
    "HusaiError": "husai.errors",
    **{
        name: "husai.model"
        for name in (
            "ModelConfig",
            "Transformer",
            "TrainConfig",
            "train_model",
            "load_model",
            "make_dataset",
            "get_fourier_basis",
            "key_frequencies",
            "to_transformer_lens",
        )
    },
    **{
        name: "husai.sae"
        for name in (
            "SAETrainConfig",
            "train_saes",
            "load_sae",
            "load_saes",
            "save_sae",
            "model_activations",
        )
    },
    **{
        name: "husai.analysis"
        for name in (
            "compute_fourier_overlap",
            "fourier_report",
            "compute_pwmcc",
            "pw_mcc",
            "compare_saes",
        )
    },
    **{name: "husai.study" for name in ("load_study", "run_study")},
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = _lazy(__name__, _EXPORTS)
