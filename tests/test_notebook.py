"""experiments/colab.ipynb runs top to bottom on the CPU, in a short setting."""

import os

import pytest
from conftest import REPO, needs_module
from local_mirror import Mirror, shared_files


def run_notebook(tmp_path):
    needs_module("nbclient", "runs the notebook")
    needs_module("ipykernel", "the notebook's kernel")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "experiments" / "colab.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # Raises CellExecutionError on any failing cell.
    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    text = "".join(output.get("text", "") for cell_outputs in outputs for output in cell_outputs)
    return outputs, text


@pytest.fixture
def short_run(monkeypatch):
    # The kernel inherits this environment.
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_NUM_TRAIN", "2048")
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_NUM_TEST", "500")
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_NUM_SAMPLES", "10")


@pytest.mark.slow
def test_colab_notebook_runs_top_to_bottom(tmp_path, idx_dir, monkeypatch, short_run):
    monkeypatch.setenv("VAE_JAX_DATA_DIR", str(idx_dir))
    outputs, text = run_notebook(tmp_path)
    assert "x cpu (cpu)" in text
    assert f"data: {idx_dir}" in text
    assert "test negative ELBO after 1 epochs" in text
    assert "-L_10 (NLL)" in text
    # Before any training, a shipped model drew digits and scored test images.
    assert "-L_100 of 1,000 test images:" in text and "(its card: NLL" in text
    shipped = [output for output in outputs[1] if "image/png" in output.get("data", {})]
    assert len(shipped) == 1
    images = [output for output in outputs[-1] if "image/png" in output.get("data", {})]
    # samples, reconstructions, loss curves; interpolations, traversals, scatter, curves.
    assert len(images) == 7
    assert sorted(os.listdir(tmp_path / "runs" / "colab"))[:4] == [
        ".vae_jax.lock",
        "checkpoints",
        "config.json",
        "interpolations.png",
    ]


@pytest.mark.slow
def test_colab_notebook_downloads_mnist_through_the_package(
    tmp_path, full_data, monkeypatch, short_run
):
    mirror = Mirror(shared_files(full_data))
    monkeypatch.setenv("VAE_JAX_MIRROR", mirror.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VAE_JAX_DATA_DIR", raising=False)
    try:
        _, text = run_notebook(tmp_path)
    finally:
        mirror.close()
    cache = tmp_path / "cache" / "vae_jax" / "mnist"
    assert f"SHA-256 verified, into {cache}" in text and f"data: {cache}" in text
    assert "test negative ELBO after 1 epochs" in text
    assert len(mirror.requests) == 4
