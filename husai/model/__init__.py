"""The grokked model: its data (all (a, b) pairs mod p), the transformer, its training loop and
run folders, its own Fourier analysis (key frequencies, single-frequency neurons), and a run loaded
into the installed TransformerLens, 3.x or 4.x (interop; TransformerLens is imported only then).

May import: husai's plumbing (errors, io, outputs, interrupts, resources, wandb_log) only.
"""

from husai._exports import lazy

_EXPORTS = {
    "ModelConfig": "husai.model.transformer",
    "Transformer": "husai.model.transformer",
    "make_dataset": "husai.model.data",
    "make_tokens": "husai.model.data",
    "make_labels": "husai.model.data",
    "TrainConfig": "husai.model.train",
    "train_model": "husai.model.train",
    "PRESETS": "husai.model.train",
    "load_model": "husai.model.checkpoint",
    "analyze_model": "husai.model.analyze",
    "get_fourier_basis": "husai.model.fourier",
    "fourier_basis": "husai.model.fourier",
    "key_frequencies": "husai.model.fourier",
    "frequency_fractions": "husai.model.fourier",
    "to_transformer_lens": "husai.model.interop",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
