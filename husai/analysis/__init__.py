"""What the SAEs learned: their latents against the model's Fourier ground truth, cross-seed
stability, the null baselines every figure is read against, the oracle dictionaries that say why
SAEs miss the truth (husai.analysis.oracle, optimisation_gap), the comparison of several SAEs
(husai.analysis.compare) and its plots.

May import: husai.sae, husai.model and the plumbing.
"""

from husai._exports import lazy

_EXPORTS = {
    **{
        name: "husai.analysis.latent_fourier"
        for name in (
            "compute_fourier_overlap",
            "latent_frequencies",
            "chance_purity",
            "fourier_report",
        )
    },
    **{
        name: "husai.analysis.stability"
        for name in (
            "compute_pwmcc",
            "pw_mcc",
            "mean_max_abs_cos",
            "cosine_matrix",
            "pairwise_matrices",
        )
    },
    "null_stats": "husai.analysis.nulls",
    "data_span": "husai.analysis.data_span",
    "seed_agreement": "husai.analysis.agreement",
    "sae_stability": "husai.analysis.seed_stability",
    "compare_saes": "husai.analysis.compare",
    "fourier_saes": "husai.analysis.compare",
    **{name: "husai.analysis.oracle" for name in ("truth_circles", "tiling", "best_code", "score")},
    "cell_oracle": "husai.analysis.optimisation_gap",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
