"""Where a study cell's time goes: a per-process stage timer.

    with stage("training"):
        ...
    take()  # -> {"training": 12.3, ...} wall seconds per stage since the last take(); cleared

Stages nest, and a stage's time is counted in the innermost one only (an "activations" stage
inside "controls" takes its seconds out of "controls"), so the stages of a run sum to at most its
wall time, without double counting; what no stage covers is the run's "other". The record is
global to the process and not thread-safe: a study worker (a process or a Ray task) runs one cell
at a time and takes its own stages at the cell's end (husai.study.runner.run_cell).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

_SECONDS: dict[str, float] = {}
"""Exclusive wall seconds per stage name since the last take()."""
_OPEN: list[float] = []
"""One entry per open stage, innermost last: the seconds its finished child stages took."""


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the wall time of the block under `name`, less the time of stages nested in it."""
    t0 = time.perf_counter()
    _OPEN.append(0.0)
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        inner = _OPEN.pop()
        _SECONDS[name] = _SECONDS.get(name, 0.0) + dt - inner
        if _OPEN:  # the parent counts this block as a child's, not its own
            _OPEN[-1] += dt


def take() -> dict[str, float]:
    """The seconds per stage recorded in this process since the last take(), and clear them."""
    out = dict(_SECONDS)
    _SECONDS.clear()
    return out


def with_other(stages: dict[str, float], wall: float) -> dict[str, float]:
    """stages plus "other": the part of `wall` seconds that no stage covered (never below 0)."""
    return dict(stages, other=max(0.0, wall - sum(stages.values())))
