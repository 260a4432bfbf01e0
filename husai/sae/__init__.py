"""Sparse autoencoders: the architectures (one file per family, stacked over seeds; shapes in
husai.sae.architectures), the sparse kernels, training, metrics, the activations they train on,
SAELens-format files, and the train-sae job (husai.sae.run).

May import: husai.model and the plumbing.
"""

from husai._exports import lazy

_EXPORTS = {
    **{
        name: "husai.sae.architectures"
        for name in (
            "StackedSAE",
            "TopKSAE",
            "BatchTopKSAE",
            "MatryoshkaSAE",
            "ReLUSAE",
            "JumpReLUSAE",
        )
    },
    "families": "husai.sae.family",
    "family": "husai.sae.family",
    "register": "husai.sae.family",
    "SAETrainConfig": "husai.sae.config",
    "train_saes": "husai.sae.train",
    "load_config": "husai.sae.config",
    "train_cells": "husai.sae.cells",
    "load_sae": "husai.sae.checkpoint",
    "load_saes": "husai.sae.checkpoint",
    "save_sae": "husai.sae.checkpoint",
    "model_activations": "husai.sae.activations",
    "extract": "husai.sae.activations",
    "reconstruction_metrics": "husai.sae.metrics",
    "run_train_sae": "husai.sae.run",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
