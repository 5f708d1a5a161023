"""experiments/colab.ipynb runs top to bottom on the CPU, in a short setting."""

import os

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient


@pytest.mark.slow
def test_colab_notebook_runs_top_to_bottom(tmp_path, tfds_dir, monkeypatch):
    # The kernel inherits this environment: a short run on the shared data, no download.
    monkeypatch.setenv("VAE_JAX_DATA_DIR", str(tfds_dir))
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_NUM_TRAIN", "2048")
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_NUM_TEST", "500")
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_NUM_SAMPLES", "10")
    notebook = nbformat.read(REPO / "experiments" / "colab.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # Raises CellExecutionError on any failing cell.

    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    text = "".join(output.get("text", "") for cell_outputs in outputs for output in cell_outputs)
    assert "x cpu (cpu)" in text
    assert "test negative ELBO after 1 epochs" in text
    assert "-L_10 (NLL)" in text
    images = [output for output in outputs[-1] if "image/png" in output.get("data", {})]
    # samples, reconstructions, loss curves; interpolations, traversals, scatter, curves.
    assert len(images) == 7
    assert sorted(os.listdir(tmp_path / "runs" / "colab"))[:3] == [
        "checkpoints",
        "config.json",
        "interpolations.png",
    ]
