"""The feature browser: every latent of every seed, looked at rather than read about.

`write_browser(root)` writes one self-contained, offline HTML page (husai.browse.page) from the SAE
folders under root and their model (husai.browse.data); `husai browse` and the study call it.
"""

from husai.browse.page import write_browser

__all__ = ["write_browser"]
