"""The evaluate command and `evaluate_run`, end to end."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from vae_jax import evaluate


def test_evaluate_run_reports_bounds_in_order(tiny_vae):
    model, params, images = tiny_vae
    results = evaluate.evaluate_run(
        model, params, images, jax.random.key(0), (1, 20, 200), show_progress=False
    )
    neg = [results["bounds"][k]["neg_bound"] for k in ("1", "20", "200")]
    assert neg == sorted(neg, reverse=True)
    assert results["nll"] == neg[-1] and results["nll_num_samples"] == 200
    assert results["elbo_nll_gap"] == pytest.approx(neg[0] - neg[-1])
    assert all(b["stderr"] > 0 for b in results["bounds"].values())
    assert len(results["kl_per_dim"]) == 3


def run_module(module, *flags):
    return subprocess.run(
        [sys.executable, "-m", module, *flags], capture_output=True, text=True, timeout=300
    )


def train_then_evaluate(data_dir, workdir, train_flags, eval_flags):
    """A 512-image run of vae_jax.main, then vae_jax.evaluate on it: (its result, eval.json)."""
    train = run_module(
        "vae_jax.main",
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--num_train=512",
        "--batch_size=128",
        *train_flags,
    )
    assert train.returncode == 0, train.stderr
    result = run_module("vae_jax.evaluate", f"--workdir={workdir}", *eval_flags)
    assert result.returncode == 0, result.stderr
    return result, json.loads((workdir / "eval.json").read_text())


@pytest.mark.slow
def test_evaluate_command_end_to_end(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    result, results = train_then_evaluate(
        idx_dir,
        workdir,
        ["--epochs=1", "--latent=2", "--hidden_sizes=32", "--binarization=dynamic"],
        ["--num_images=300", "--num_samples=1,10,100"],
    )
    assert results["protocol"]["binarization"] == "dynamic" and results["num_images"] == 300
    neg = [results["bounds"][k]["neg_bound"] for k in ("1", "10", "100")]
    assert neg == sorted(neg, reverse=True)
    assert "-L_100 (NLL)" in result.stdout
    assert "\r" not in result.stderr  # tqdm draws no bar into a file
    for name in (
        "interpolations.png",
        "traversals.png",
        "latent_scatter.png",
        "manifold.png",
        "training_curves.png",
    ):
        assert (workdir / name).stat().st_size > 1000, name


def test_evaluate_command_refuses_a_folder_without_a_run(tmp_path):
    result = run_module("vae_jax.evaluate", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert "is not a finished run" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_continuous_bernoulli_run_gets_true_ordered_bounds(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    result, results = train_then_evaluate(
        idx_dir,
        workdir,
        ["--epochs=2", "--reconstruction=continuous_bernoulli"],
        ["--num_images=200", "--num_samples=1,50"],
    )
    assert results["protocol"]["reconstruction"] == "continuous_bernoulli"
    assert results["protocol"]["true_likelihood"] and "note:" not in result.stderr
    neg = [results["bounds"][k]["neg_bound"] for k in ("1", "50")]
    assert all(np.isfinite(neg)) and neg[1] <= neg[0]


def test_a_single_k_is_labelled_the_elbo_not_an_nll(tiny_vae):
    model, params, images = tiny_vae
    protocol = {"dataset": "mnist", "binarization": "dynamic", "reconstruction": "bernoulli"}
    one = evaluate.evaluate_run(model, params, images, jax.random.key(0), (1,), show_progress=False)
    assert "-L_1 (ELBO)" in evaluate.format_table(one, protocol)
    assert "NLL" not in evaluate.format_table(one, protocol)
    two = evaluate.evaluate_run(
        model, params, images, jax.random.key(0), (1, 10), show_progress=False
    )
    assert "-L_10 (NLL)" in evaluate.format_table(two, protocol)
