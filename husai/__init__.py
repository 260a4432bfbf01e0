"""husai: do sparse autoencoders learn real, reproducible features?

Answered on a small transformer that has grokked modular addition, whose true features
(a handful of Fourier frequencies) are known. See README.md.
"""

__version__ = "0.1.0"
