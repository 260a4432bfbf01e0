"""The feature browser: every latent of every seed, looked at rather than read about.

`write_browser(root)` writes an offline HTML page (husai.browse.page) from the SAE folders under
root and their model (husai.browse.data, husai.browse.effects): one self-contained file for one
cell; for a study, the page plus one data file per cell, read on demand. `husai browse` and the
study call it.
"""

from husai.browse.page import write_browser

__all__ = ["write_browser"]
