"""Small SAE training configs shared by the SAE tests: one per architecture, 4x expansion."""

from husai.sae.config import SAETrainConfig


def tiny_configs(epochs: int) -> dict[str, SAETrainConfig]:
    common = dict(expansion=4, batch_size=32, epochs=epochs, lr=3e-3)
    return {
        "topk": SAETrainConfig(architecture="topk", k=3, **common),
        "batchtopk": SAETrainConfig(architecture="batchtopk", k=3, **common),
        "matryoshka": SAETrainConfig(architecture="matryoshka", k=3, matryoshka_levels=3, **common),
        "relu": SAETrainConfig(architecture="relu", l1_coeff=0.01, **common),
        "jumprelu": SAETrainConfig(
            architecture="jumprelu",
            l0_coeff=0.01,
            jumprelu_bandwidth=0.05,
            jumprelu_init_threshold=0.05,
            **common,
        ),
    }
