"""husai: do sparse autoencoders learn real, reproducible features?

Answered on a small transformer that has grokked modular addition, whose true features
(a handful of Fourier frequencies) are known. See README.md.
"""

from .interrupts import guard_startup as _guard_startup

# Before the seconds-long torch import: a Ctrl-C while the `husai` command starts must not print
# a traceback (husai.interrupts).
_guard_startup()

import torch as _torch  # noqa: E402

__version__ = "0.1.0"

# AdamW with weight decay 1.0 drives weights and optimizer state into denormal floats, which make
# every elementwise op many times slower on CPUs. Flushing must be switched on here, at import,
# before torch starts its OpenMP pool: worker threads copy the floating-point mode (MXCSR) of the
# thread that creates them, and torch.set_flush_denormal only changes the calling thread. Set
# later, it left the second of two threads computing with denormals (3x slower steps, measured).
_torch.set_flush_denormal(True)
