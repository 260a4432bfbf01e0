"""Public names of a package, imported on first use (PEP 562), so that `import husai` and the CLI's
start stay fast: a name's module (scipy, matplotlib behind it) loads only when the name is used."""

from __future__ import annotations

import importlib


def lazy(package: str, exports: dict[str, str]):
    """-> (__getattr__, __dir__) for `package`; exports maps a public name to "module" or
    "module:attribute" (the attribute's own name when it differs from the public one)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = exports[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
