"""CLI commands of the model stage (filled in by train_model)."""


def register(app) -> None:
    pass
