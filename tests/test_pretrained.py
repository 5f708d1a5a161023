"""The shipped models: each loads, is the file its card describes, and still scores what
its card says, so that no change to the model code can silently change what the weights
mean; a damaged file is a one-line error; `--pretrained` and `--init_from` end to end."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_evaluate import run_module

import vae_jax
from vae_jax import bounds, data, pretrained, train
from vae_jax.config import Config
from vae_jax.errors import InputError
from vae_jax.run import train_and_evaluate
from vae_jax.workdir import LoadedRun, load_model

NAMES = pretrained.names()
SHIPPED = pathlib.Path(pretrained.__file__).parent
MAX_SHIPPED_BYTES = 25_000_000


def assert_same_tree(ours, theirs, atol: float) -> None:
    """The same structure, and leaves equal to `atol`."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol), ours, theirs)


def test_the_zoo_ships_its_models_within_its_size():
    assert {"mnist_reference", "mnist_binarized", "mnist_vamp_hierarchy"} <= set(NAMES)
    weights = [SHIPPED / pretrained.card(name)["weights"]["file"] for name in NAMES]
    assert sum(path.stat().st_size for path in weights) <= MAX_SHIPPED_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_a_card_describes_its_file_and_its_training(name):
    card = pretrained.card(name)
    content = (SHIPPED / card["weights"]["file"]).read_bytes()
    assert card["weights"]["bytes"] == len(content)
    assert card["weights"]["sha256"] == hashlib.sha256(content).hexdigest()
    run = pretrained.load(name)
    sizes = [np.size(leaf) for leaf in jax.tree.leaves(run.params)]
    assert card["weights"]["parameters"] == sum(sizes)
    assert {leaf.dtype for leaf in jax.tree.leaves(run.params)} == {np.dtype(np.float32)}
    training = card["training"]
    assert training["command"].startswith("python -m vae_jax.main ")
    assert f"--epochs={run.config.epochs}" in training["command"] or run.config.epochs == 20
    assert training["epochs"] == run.config.epochs
    assert {"time_min", "date", "machine", "jax", "commit"} <= set(training)
    assert card["data"]["binarization"] == run.config.binarization


@pytest.mark.parametrize("name", NAMES)
def test_a_card_reports_ordered_bounds_on_all_test_images(name):
    evaluation = pretrained.card(name)["evaluation"]
    assert evaluation["num_images"] == 10_000 and evaluation["nll_num_samples"] == 5000
    neg = [evaluation["bounds"][k]["neg_bound"] for k in ("1", "50", "5000")]
    assert neg == sorted(neg, reverse=True)  # -L_k falls as k grows
    assert evaluation["nll"] == neg[-1] and evaluation["test_neg_elbo"] == neg[0]
    assert 0 < evaluation["nll_stderr"] < 1
    assert evaluation["active_units"] == sum(evaluation["active_units_by_layer"])


@pytest.mark.parametrize("name", NAMES)
def test_a_shipped_model_still_scores_its_cards_check(name, mnist_idx):
    """The card's -L_100 of the first 1,000 test images, under evaluate's key, scored
    again: a change to the models, priors or likelihoods that moved it fails here."""
    run = pretrained.load(name)
    assert isinstance(run, LoadedRun) and run.image_shape == (28, 28, 1)
    check = pretrained.card(name)["check"]
    k = check["num_samples"]
    images = data.eval_inputs(mnist_idx.test_images[: check["num_images"]], run.config.binarization)
    key = jax.random.fold_in(train.run_keys(run.config.seed).eval, k)
    neg_bound = bounds.estimate_negative_bound(run.model, run.params, images, key, k)
    assert neg_bound.mean() == pytest.approx(check["neg_bound"], rel=1e-4)


TARGET_NLL = {"mnist_binarized": 85.0, "mnist_vamp_hierarchy": 82.0}  # issue 39's


def test_the_likelihood_models_meet_their_targets():
    shipped = set(NAMES) & set(TARGET_NLL)
    assert shipped, "no model trained for likelihood is shipped"
    for name in shipped:
        evaluation = pretrained.card(name)["evaluation"]
        assert evaluation["true_likelihood"] and evaluation["nll"] <= TARGET_NLL[name], name


def test_an_unknown_name_is_refused_with_the_names():
    with pytest.raises(InputError, match="mnist_reference"):
        pretrained.load("mnist_nosuch")
    with pytest.raises(InputError, match="neither a shipped model"):
        pretrained.load_any("mnist_nosuch")


@pytest.fixture
def damaged_zoo(tmp_path, monkeypatch):
    """A copy of the zoo's folder that `vae_jax.pretrained` reads instead of its own."""
    folder = tmp_path / "pretrained"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(pretrained, "_FOLDER", folder)
    return folder


def test_a_truncated_or_corrupted_file_is_one_line_that_says_reinstall(damaged_zoo):
    weights = damaged_zoo / "mnist_reference.msgpack"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError, match="damaged.*reinstall") as truncated:
        pretrained.load("mnist_reference")
    flipped = bytearray(content)
    flipped[len(content) // 3] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="damaged.*reinstall") as corrupted:
        pretrained.load("mnist_reference")
    weights.unlink()
    with pytest.raises(InputError, match="cannot read .*reinstall") as missing:
        pretrained.load("mnist_reference")
    for error in (truncated, corrupted, missing):
        assert "mnist_reference.msgpack" in str(error.value) and "\n" not in str(error.value)


def test_a_damaged_file_stops_the_commands_in_one_line(idx_dir, tmp_path):
    """The package copied, one weight file flipped: both commands exit 2 with one line."""
    copy = tmp_path / "site"
    shutil.copytree(SHIPPED.parent, copy / "vae_jax", ignore=shutil.ignore_patterns("__pycache__"))
    weights = copy / "vae_jax" / "pretrained" / "mnist_reference.msgpack"
    content = bytearray(weights.read_bytes())
    content[100] ^= 0xFF
    weights.write_bytes(bytes(content))
    for module, flag in (("vae_jax.evaluate", "--pretrained"), ("vae_jax.main", "--init_from")):
        out = tmp_path / module
        command = [f"{flag}=mnist_reference", f"--workdir={out}", f"--data_dir={idx_dir}"]
        result = subprocess.run(  # from the copy: PYTHONPATH first, and not the repository
            [sys.executable, "-m", module, *command],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.count("\n") == 1 and "is damaged" in result.stderr, result.stderr
        assert str(copy) in result.stderr and not out.exists()


@pytest.mark.slow
def test_the_evaluate_command_reproduces_a_cards_check(idx_dir, tmp_path):
    name = "mnist_binarized"
    check = pretrained.card(name)["check"]
    out = tmp_path / "scored"
    flags = [f"--workdir={out}", f"--data_dir={idx_dir}", "--num_samples=100"]
    result = run_module("vae_jax.evaluate", f"--pretrained={name}", *flags, "--num_images=1000")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "eval.json").read_text())
    assert results["bounds"]["100"]["neg_bound"] == pytest.approx(check["neg_bound"], rel=1e-4)
    assert results["protocol"]["params"] == f"pretrained:{name}"
    for picture in ("interpolations.png", "traversals.png", "latent_scatter.png"):
        assert (out / picture).stat().st_size > 1000
    # An unknown model creates nothing; a folder holding a run is not written into.
    result = run_module("vae_jax.evaluate", "--pretrained=nosuch", f"--workdir={tmp_path / 'n'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "n").exists()
    (out / "config.json").write_text("{}")
    result = run_module("vae_jax.evaluate", f"--pretrained={name}", *flags)
    assert result.returncode == 2 and "holds a trained run" in result.stderr


@pytest.mark.slow
def test_init_from_starts_training_from_a_shipped_model_or_a_run(idx_dir, tmp_path):
    shipped = pretrained.load("mnist_reference")
    # A rate of 1e-12 leaves the parameters where they start: the shipped ones.
    common = [f"--data_dir={idx_dir}", "--num_train=256", "--epochs=1", "--learning_rate=1e-12"]
    result = run_module(
        "vae_jax.main", *common, "--init_from=mnist_reference", f"--workdir={tmp_path / 'a'}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tuned = load_model(str(tmp_path / "a"))
    assert tuned.config.init_from == "mnist_reference"
    assert_same_tree(tuned.params, shipped.params, atol=1e-6)
    # A trained model's test ELBO, from the first epoch: not one of drawn parameters.
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["test_elbo"] < 110
    # A finished run's folder starts another (through the Python API's Config).
    again = Config(
        data_dir=str(idx_dir), num_train=256, epochs=1, learning_rate=1e-12,
        init_from=str(tmp_path / "a"), workdir=str(tmp_path / "b"),
    )  # fmt: skip
    train_and_evaluate(again.validate())
    again = load_model(str(tmp_path / "b"))
    assert_same_tree(again.params, shipped.params, atol=1e-6)


def test_init_from_refuses_other_model_flags_in_one_line(idx_dir, tmp_path):
    out = tmp_path / "w"
    result = run_module(
        "vae_jax.main",
        "--init_from=mnist_binarized",
        "--latent=32",
        "--hidden_sizes=256",
        f"--data_dir={idx_dir}",
        f"--workdir={out}",
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--latent=64 --hidden_sizes=512,256" in result.stderr, result.stderr
    assert not out.exists()
    result = run_module(
        "vae_jax.main", "--init_from=nosuch", f"--data_dir={idx_dir}", f"--workdir={out}"
    )
    assert result.returncode == 2 and "neither a shipped model" in result.stderr
    assert not out.exists()


def test_create_train_state_starts_from_given_params_and_keeps_the_callers():
    import optax

    run = pretrained.load("mnist_reference")
    given = jax.tree.map(jax.numpy.asarray, run.params)
    state = train.create_train_state(run.model, jax.random.key(0), optax.adam(1e-3), params=given)
    images = np.zeros((8, 784), np.uint8)
    state, _ = train.train_step(state, images, jax.random.key(1))
    assert_same_tree(given, run.params, atol=0)  # not donated away with the state
    other = train.init_params(vae_jax.VAE(latent=32), jax.random.key(0))
    with pytest.raises(ValueError, match="params do not fit the model"):
        train.create_train_state(run.model, jax.random.key(0), optax.adam(1e-3), params=other)


def test_the_package_data_ships_every_zoo_file():
    import tomllib

    pyproject = tomllib.loads((SHIPPED.parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["vae_jax.pretrained"]
    files = [path for path in SHIPPED.iterdir() if path.suffix in (".json", ".msgpack")]
    assert len(files) == 2 * len(NAMES)
    assert all(any(path.match(pattern) for pattern in patterns) for path in files)


def test_a_shipped_model_draws_digits_on_the_core_install(tmp_path):
    from test_package import WITHOUT_EXTRA

    code = WITHOUT_EXTRA + (
        "import jax, numpy as np\n"
        "from vae_jax import plots, pretrained\n"
        "from vae_jax.models import sample_images\n"
        "run = pretrained.load('mnist_binarized')\n"
        "digits = sample_images(run.model, run.params, jax.random.key(0), 64)\n"
        f"plots.save_image_grid(digits, run.image_shape, {str(tmp_path / 'd.png')!r})\n"
        "print(digits.shape, float(np.asarray(digits).min()) >= 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["(64,", "784)", "True"]
    assert (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")


def test_the_docs_table_is_the_cards(tmp_path):
    """docs/pretrained.md's table is what `experiments/zoo.py table` prints from the cards."""
    result = subprocess.run(
        [sys.executable, str(SHIPPED.parents[1] / "experiments" / "zoo.py"), "table"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(NAMES)
    page = (SHIPPED.parents[1] / "docs" / "pretrained.md").read_text()
    assert "\n".join(rows) in page
