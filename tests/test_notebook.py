"""The walkthrough notebook runs top to bottom and shows its plots inline."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [
        o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(images) >= 3  # training curves, purity histograms, matched-cosine histogram
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "PW-MCC" in text and "Fourier overlap" in text
    assert (tmp_path / "runs" / "walkthrough" / "model" / "model.safetensors").is_file()
