"""The evaluate command and `evaluate_run`, end to end."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_precision import HIGHEST, dots

import vae_jax
from vae_jax import bounds, data, evaluate, models
from vae_jax.errors import InputError
from vae_jax.train import run_keys


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


def run_module(module, *flags, env=None):
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )


def train_then_evaluate(data_dir, workdir, train_flags, eval_flags, eval_env=None):
    """A 512-image run of vae_jax.main, then vae_jax.evaluate on it (in `eval_env`, added to
    the environment): (its result, eval.json)."""
    train = run_module(
        "vae_jax.main",
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--num_train=512",
        "--batch_size=128",
        *train_flags,
    )
    assert train.returncode == 0, train.stderr
    result = run_module("vae_jax.evaluate", f"--workdir={workdir}", *eval_flags, env=eval_env)
    assert result.returncode == 0, result.stderr
    return result, json.loads((workdir / "eval.json").read_text())


@pytest.mark.slow
def test_evaluate_command_end_to_end(idx_dir, tmp_path):
    workdir, dump = tmp_path / "w", tmp_path / "hlo"
    # Under a device default of bfloat16 (a TPU's; a recent GPU's is TF32), with XLA's dump
    # of every program the command compiles: each dot must still be at full precision.
    bfloat16_default = {
        "JAX_DEFAULT_MATMUL_PRECISION": "bfloat16",
        "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
        "JAX_ENABLE_COMPILATION_CACHE": "false",  # a cached program is neither compiled nor dumped
    }
    result, results = train_then_evaluate(
        idx_dir,
        workdir,
        ["--epochs=1", "--latent=2", "--hidden_sizes=32", "--binarization=dynamic"],
        ["--num_images=300", "--num_samples=1,10,100"],
        eval_env=bfloat16_default,
    )
    found = [line for path in dump.glob("*.txt") for line in dots(path.read_text())]
    assert len(found) > 20  # the bounds, the diagnostics and the pictures
    assert [line for line in found if HIGHEST not in line] == []
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
    assert not (workdir / evaluate.PARTIAL_FILE).exists()  # eval.json holds the bounds now


def test_evaluate_command_refuses_a_folder_without_a_run(tmp_path):
    result = run_module("vae_jax.evaluate", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert "is not a finished run" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_continuous_bernoulli_run_scores_itself_everywhere(idx_dir, tmp_path):
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

    # The run loaded from its folder scores with its own likelihood, with nothing else
    # passed, as evaluate does; the Bernoulli's numbers would be far from these.
    run = vae_jax.load_model(str(workdir))  # reads no data
    assert run.model.likelihood == vae_jax.ContinuousBernoulli()
    test_images = data.eval_inputs(data.read_idx_dir(str(idx_dir)).test_images[:200], "none")
    key = jax.random.fold_in(run_keys(run.config.seed).eval, 50)  # evaluate's draws for k = 50
    neg_bound = bounds.estimate_negative_bound(run.model, run.params, test_images, key, 50)
    assert neg_bound.mean() == pytest.approx(results["bounds"]["50"]["neg_bound"], rel=1e-6)
    bernoulli = run.model.clone(likelihood=vae_jax.Bernoulli())
    wrong = bounds.estimate_negative_bound(bernoulli, run.params, test_images, key, 50).mean()
    assert abs(wrong - results["bounds"]["50"]["neg_bound"]) > 10
    samples = models.sample_images(run.model, run.params, jax.random.key(0), 4)
    assert samples.shape == (4, 784) and np.all((samples >= 0) & (samples <= 1))


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


def test_a_stopped_evaluation_resumes_from_its_parts(tiny_vae, tmp_path):
    model, params, images = tiny_vae
    key, path = jax.random.key(4), str(tmp_path / evaluate.PARTIAL_FILE)
    whole = bounds.estimate_negative_bound(model, params, images, jax.random.fold_in(key, 7), 7)
    # In parts, each image keeps its draws: the numbers of one call.
    in_parts = evaluate.evaluate_run(model, params, images, key, (7,), partial_path=path)
    assert in_parts["bounds"]["7"]["neg_bound"] == pytest.approx(whole.mean(), rel=1e-6)
    with np.load(path) as saved:
        np.testing.assert_allclose(saved["-L_7"], whole, rtol=1e-6)
        fingerprint = str(saved["fingerprint"])
    # A part found in the file is not scored again: mark one part's images, and an
    # evaluation of the same model, parameters, images and key takes them as they are.
    marked = whole.copy()
    marked[:2] = 1000.0  # 30 images in 20 parts: 2 a part
    np.savez(path, fingerprint=fingerprint, **{"-L_7": marked})
    resumed = evaluate.evaluate_run(model, params, images, key, (7,), partial_path=path)
    assert resumed["bounds"]["7"]["neg_bound"] == pytest.approx(marked.mean(), rel=1e-6)
    # Other parameters make another fingerprint: the file is ignored, then replaced.
    other_params = jax.tree.map(lambda p: p + 0.01, params)
    other = evaluate.evaluate_run(model, other_params, images, key, (7,), partial_path=path)
    assert other["bounds"]["7"]["neg_bound"] < 1000.0
    with np.load(path) as saved:
        assert str(saved["fingerprint"]) != fingerprint
        assert not np.isnan(saved["-L_7"]).any()


@pytest.mark.slow
def tiny_trained_run(idx_dir, workdir) -> None:
    """One epoch of a 2-d model on 512 images, trained in this process, into `workdir`."""
    from vae_jax.config import Config
    from vae_jax.run import train_and_evaluate

    train_and_evaluate(Config(
        data_dir=str(idx_dir), workdir=str(workdir), num_train=512, batch_size=128, epochs=1,
        latent=(2,), hidden_sizes=(16,), tensorboard=False,
    ))  # fmt: skip


def test_evaluate_counts_at_their_edges(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    tiny_trained_run(idx_dir, workdir)
    result = run_module("vae_jax.evaluate", f"--workdir={workdir}", "--num_images=1",
                        "--num_samples=1,3")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((workdir / "eval.json").read_text())["num_images"] == 1
    run = vae_jax.load_model(str(workdir))
    for num_images in (2, 11):  # below the pictures' sizes: numbers, fewer rows
        results = evaluate.evaluate_workdir(
            str(workdir), *run[:3], (2,), data_dir=str(idx_dir), num_images=num_images,
            spherical=False,
        )  # fmt: skip
        assert results["num_images"] == num_images and np.isfinite(results["nll"])
        assert json.loads((workdir / "eval.json").read_text())["num_images"] == num_images
    with pytest.raises(InputError, match="--num_images=5000 exceeds the 1024 test images"):
        evaluate.evaluate_workdir(
            str(workdir), *run[:3], (2,), data_dir=str(idx_dir), num_images=5000,
            spherical=False,
        )  # fmt: skip
    result = run_module("vae_jax.evaluate", f"--workdir={workdir}", "--num_images=-5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--num_images must be >= 0 (0 = all), got -5" in result.stderr


def test_evaluate_leaves_no_data_folder_it_could_not_fill(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    tiny_trained_run(idx_dir, workdir)
    missing = tmp_path / "nonexistent" / "mnist"
    result = run_module("vae_jax.evaluate", f"--workdir={workdir}", f"--data_dir={missing}")
    assert result.returncode == 2 and "cannot download mnist" in result.stderr
    assert not (tmp_path / "nonexistent").exists()
    assert sorted(p.name for p in workdir.iterdir() if p.suffix == ".json") == ["config.json"]


def test_a_resumed_evaluation_counts_the_time_of_every_part(tiny_vae, tmp_path):
    model, params, images = tiny_vae
    key, path = jax.random.key(4), str(tmp_path / evaluate.PARTIAL_FILE)
    first = evaluate.evaluate_run(model, params, images, key, (7,), partial_path=path)
    saved = evaluate.PartialBounds(path, evaluate.fingerprint(model, params, images, key))
    assert saved.time_s("-L_7") == pytest.approx(first["bounds"]["7"]["time_s"])
    saved.add_time("-L_7", 1000.0)  # as if an earlier call had spent 1,000 s on its parts
    saved.save()
    resumed = evaluate.evaluate_run(model, params, images, key, (7,), partial_path=path)
    assert resumed["bounds"]["7"]["time_s"] == pytest.approx(first["bounds"]["7"]["time_s"] + 1000)
