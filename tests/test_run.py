"""The run layer: the workdir lock, metrics, load_model, schedules that survive resume,
and short end-to-end runs of each training option."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import bounds, data, workdir
from vae_jax import run as run_module
from vae_jax.config import Config
from vae_jax.errors import InputError
from vae_jax.run import train_and_evaluate
from vae_jax.train import run_keys

# A tiny run: 2 epochs of 2 steps.
TINY = dict(num_train=256, batch_size=128, epochs=2, latent=4, hidden_sizes=(32,))


def tiny_run(idx_dir, tmp_path, name="w", **settings) -> list[dict]:
    config = Config(**{**TINY, **settings}, data_dir=str(idx_dir), workdir=str(tmp_path / name))
    train_and_evaluate(config)
    return workdir.read_metrics(os.path.join(config.workdir, workdir.METRICS_FILE))


def strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


# --- The lock ---------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from vae_jax import bounds, data, workdir
with workdir.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(folder):
    """A process holding `folder`'s lock until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "locked\n"
    return process


def test_a_held_workdir_is_refused_naming_the_holder_and_sigkill_frees_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        in_use = rf"is in use by process {holder.pid} on "
        with pytest.raises(InputError, match=in_use), workdir.lock(str(tmp_path)):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir.lock(str(tmp_path)):  # The kernel dropped the lock with the process.
        assert str(os.getpid()) in (tmp_path / workdir.LOCK_FILE).read_text()
    assert (tmp_path / workdir.LOCK_FILE).read_text() == ""  # emptied on release


def run_main(*flags):
    return subprocess.Popen(
        [sys.executable, "-m", "vae_jax.main", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_is_refused(idx_dir, tmp_path):
    folder = tmp_path / "w"
    flags = [
        f"--data_dir={idx_dir}",
        f"--workdir={folder}",
        "--epochs=5",
        "--num_train=2048",
        "--batch_size=32",
    ]
    first = run_main(*flags)
    lock_file = folder / workdir.LOCK_FILE
    deadline = time.time() + 60
    while not (lock_file.exists() and lock_file.read_text()) and first.poll() is None:
        assert time.time() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    start = time.time()
    second = run_main(*flags)
    _, stderr = second.communicate(timeout=60)
    assert time.time() - start < 20
    assert second.returncode == 2
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr
    assert f"--workdir={folder} is in use by process {first.pid} on " in stderr
    _, first_stderr = first.communicate(timeout=300)
    assert first.returncode == 0, first_stderr
    lines = (folder / workdir.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5]


def test_evaluate_refuses_a_workdir_in_use(idx_dir, tmp_path):
    tiny_run(idx_dir, tmp_path)
    folder = tmp_path / "w"
    before = sorted(os.listdir(folder))
    holder = hold_lock(folder)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vae_jax.evaluate", f"--workdir={folder}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is in use by process {holder.pid}" in result.stderr
    assert sorted(os.listdir(folder)) == before  # no eval.json, no pictures


# --- Files ----------------------------------------------------------------------------


def test_non_finite_metrics_are_written_as_null(tmp_path):
    path = str(tmp_path / workdir.METRICS_FILE)
    workdir.write_metrics(path, [{"epoch": 1, "loss": float("nan"), "kl": float("inf")}])
    workdir.write_metrics(path, [{"epoch": 2, "loss": 3.5, "kl": -math.inf}], append=True)
    lines = (tmp_path / workdir.METRICS_FILE).read_text().splitlines()
    assert [strict_json(line) for line in lines] == [
        {"epoch": 1, "loss": None, "kl": None},
        {"epoch": 2, "loss": 3.5, "kl": None},
    ]


def test_load_model_needs_no_data(idx_dir, tmp_path, monkeypatch):
    data_copy = tmp_path / "data"
    shutil.copytree(idx_dir, data_copy)
    config = Config(**TINY, data_dir=str(data_copy), workdir=str(tmp_path / "w"))
    train_and_evaluate(config)
    shutil.rmtree(data_copy)  # The run's data are gone, and there is no network:
    monkeypatch.setenv("VAE_JAX_MIRROR", "http://127.0.0.1:9/")
    model, params, loaded, image_shape = workdir.load_model(config.workdir)
    assert loaded == config
    assert image_shape == (28, 28, 1)  # enough to draw pictures without the data
    assert (model.latent, model.image_size, model.hidden_sizes) == (4, 784, (32,))
    saved = (tmp_path / "w" / workdir.PARAMS_FILE).read_bytes()
    assert flax.serialization.to_bytes(params) == saved
    logits, _, _ = model.apply({"params": params}, jnp.zeros((2, 784)), jax.random.key(0))
    assert logits.shape == (2, 784)


def test_load_model_refuses_params_of_another_model(idx_dir, tmp_path):
    tiny_run(idx_dir, tmp_path)
    config_path = tmp_path / "w" / workdir.CONFIG_FILE
    values = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**values, "latent": 5}))
    with pytest.raises(InputError, match="does not fit the model of"):
        workdir.load_model(str(tmp_path / "w"))


# --- Schedules that survive resume ------------------------------------------------------


@pytest.mark.slow
def test_a_cyclical_run_extended_on_resume_equals_an_uninterrupted_one(idx_dir, tmp_path):
    settings = dict(beta_schedule="cyclical", cycle_epochs=3.0, num_train=512)
    whole = tiny_run(idx_dir, tmp_path, "whole", **settings, epochs=6)
    tiny_run(idx_dir, tmp_path, "extended", **settings, epochs=4)
    extended = tiny_run(idx_dir, tmp_path, "extended", **settings, epochs=6)

    def losses(records):
        return [
            {k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in records
        ]

    assert losses(extended) == losses(whole)
    # 4 steps an epoch, cycles of 12 steps rising over 6: beta at each epoch's last step.
    assert [r["beta"] for r in whole] == [0.5, 1.0, 1.0, 0.5, 1.0, 1.0]
    assert (tmp_path / "extended" / workdir.PARAMS_FILE).read_bytes() == (
        tmp_path / "whole" / workdir.PARAMS_FILE
    ).read_bytes()


def test_a_cosine_run_refuses_a_new_length_on_resume(idx_dir, tmp_path):
    tiny_run(idx_dir, tmp_path, lr_schedule="cosine", epochs=1)
    with pytest.raises(InputError, match=r"--epochs \(checkpoint 1, now 2\) with --lr_schedule"):
        tiny_run(idx_dir, tmp_path, lr_schedule="cosine", epochs=2)


# --- Each option, end to end -------------------------------------------------------------


def test_metrics_name_the_objective_and_the_elbo(idx_dir, tmp_path):
    records = tiny_run(idx_dir, tmp_path, beta=4.0)
    for r in records:
        # test_elbo is the beta = 1 bound whatever the run's beta; test_loss weighs KL by 4.
        assert r["test_elbo"] == pytest.approx(r["test_recon"] + r["test_kl"], rel=1e-6)
        assert r["test_loss"] == pytest.approx(r["test_recon"] + 4 * r["test_kl"], rel=1e-6)
        assert r["test_loss"] > r["test_elbo"]
        assert r["train_objective"] == pytest.approx(r["train_loss"], rel=1e-5)
        assert r["grad_norm"] > 0 and r["learning_rate"] == 1e-3


def test_iwae_run(idx_dir, tmp_path):
    records = tiny_run(idx_dir, tmp_path, objective="iwae", num_samples=5)
    for r in records:
        # -L_5 sits below the one-sample bound recon + KL, on average over the epoch.
        assert r["train_objective"] < r["train_loss"]
    assert records[1]["test_elbo"] < records[0]["test_elbo"]


def test_dreg_run(idx_dir, tmp_path):
    records = tiny_run(
        idx_dir, tmp_path, objective="iwae", num_samples=5, gradient_estimator="dreg"
    )
    assert all(r["train_objective"] < r["train_loss"] for r in records)
    assert records[1]["test_elbo"] < records[0]["test_elbo"]


def test_free_bits_run(idx_dir, tmp_path):
    records = tiny_run(idx_dir, tmp_path, free_bits=0.5)
    for r in records:
        # Every one of the 4 latent dimensions adds at least its floor.
        assert r["train_objective"] >= r["train_recon"] + 4 * 0.5 - 1e-3
        assert r["train_kl"] < 4 * 0.5  # ... while the true KL is still below it.


def test_cyclical_run(idx_dir, tmp_path):
    records = tiny_run(idx_dir, tmp_path, beta_schedule="cyclical", cycle_epochs=2.0, epochs=3)
    # 2 steps an epoch, cycles of 4 steps rising over 2: last steps 1, 3, 5.
    assert [r["beta"] for r in records] == [0.5, 1.0, 0.5]


def test_conv_run(idx_dir, tmp_path):
    records = tiny_run(idx_dir, tmp_path, architecture="conv", conv_channels=(4, 8))
    assert records[1]["test_elbo"] < records[0]["test_elbo"]
    model, params, _, _ = workdir.load_model(str(tmp_path / "w"))
    assert params["encoder"]["conv1"]["kernel"].shape == (3, 3, 1, 4)


def test_bfloat16_run_trains_like_float32(idx_dir, tmp_path):
    f32 = tiny_run(idx_dir, tmp_path, "f32", epochs=1)
    bf16 = tiny_run(idx_dir, tmp_path, "bf16", epochs=1, dtype="bfloat16")
    assert bf16[0]["test_elbo"] != f32[0]["test_elbo"]  # really another precision ...
    assert bf16[0]["test_elbo"] == pytest.approx(f32[0]["test_elbo"], rel=1e-2)  # ... close


@pytest.mark.parametrize(
    "settings, expected_rates",
    [
        # Cosine from 1e-3 to 0 over 2 epochs of 2 steps: the rate at steps 1 and 3.
        (
            dict(optimizer="adamw", grad_clip=1.0, lr_schedule="cosine"),
            [0.5e-3 * (1 + math.cos(math.pi / 4)), 0.5e-3 * (1 + math.cos(3 * math.pi / 4))],
        ),
        # Burda: epoch 1 at 1e-3, then 3 epochs at 1e-3 * 10^(-1/7).
        (dict(lr_schedule="burda"), [1e-3, 1e-3 * 10 ** (-1 / 7)]),
    ],
)
def test_optimizer_flags_run(idx_dir, tmp_path, settings, expected_rates):
    records = tiny_run(idx_dir, tmp_path, **settings)
    np.testing.assert_allclose([r["learning_rate"] for r in records], expected_rates, rtol=1e-6)
    assert all(np.isfinite(r["test_elbo"]) for r in records)


def test_gradient_clipping_changes_the_updates(idx_dir, tmp_path):
    plain = tiny_run(idx_dir, tmp_path, "plain", epochs=1)
    clipped = tiny_run(idx_dir, tmp_path, "clipped", epochs=1, grad_clip=1.0)
    # Same init, same batches, gradients of norm > 1: clipped to norm 1, they change
    # Adam's moment estimates from the second step on, and so the trained parameters.
    assert plain[0]["grad_norm"] > 1.0
    assert clipped[0]["test_elbo"] != plain[0]["test_elbo"]


def test_config_refuses_settings_of_another_optimizer():
    with pytest.raises(InputError, match="--weight_decay=0.1 is for --optimizer=adamw"):
        dataclasses.replace(Config(), weight_decay=0.1).validate()
    with pytest.raises(InputError, match="--grad_clip must be >= 0"):
        Config(grad_clip=-1.0).validate()


# --- Model selection on held-out training images ----------------------------------------


def test_split_validation_holds_out_the_last_training_images(mnist_idx):
    dataset, valid = data.split_validation(mnist_idx, num_valid=48, num_train=1000)
    np.testing.assert_array_equal(valid, mnist_idx.train_images[-48:])
    np.testing.assert_array_equal(dataset.train_images, mnist_idx.train_images[:1000])
    np.testing.assert_array_equal(dataset.test_images, mnist_idx.test_images)
    with pytest.raises(InputError, match="--num_valid=2000 leaves 48 of the 2048"):
        data.split_validation(mnist_idx, num_valid=2000, num_train=100)


def test_num_valid_logs_the_validation_elbo_and_keeps_the_best_parameters(idx_dir, tmp_path):
    records = tiny_run(idx_dir, tmp_path, num_valid=256, epochs=3, learning_rate=3e-3)
    valid_elbos = [r["valid_elbo"] for r in records]
    assert all(np.isfinite(valid_elbos))
    model, params, config, _ = workdir.load_model(str(tmp_path / "w"), workdir.BEST_PARAMS_FILE)
    # best_params.msgpack scores the lowest validation ELBO of the run, on the held-out
    # images with the run's fixed validation draws.
    dataset = data.read_idx_dir(str(idx_dir))
    _, valid = data.split_validation(dataset, 256, config.num_train)
    terms = bounds.elbo_terms(
        model, params, data.eval_inputs(valid, "none"), jax.random.fold_in(run_keys(0).eval, 1)
    )
    assert float(np.mean(terms.recon + terms.kl)) == pytest.approx(min(valid_elbos), rel=1e-6)


# --- Callbacks and early stopping ---------------------------------------------------------


def test_callbacks_numbers_join_the_record_everywhere_and_survive_a_stop(idx_dir, tmp_path):
    seen = []

    def my_metric(epoch, record, params):
        seen.append((epoch, record["epoch"], jax.tree.structure(params)))
        return {"my_metric": 2 * epoch, "param_norm": optax.tree.norm(params)}

    def quiet_on_odd_epochs(epoch, record, params):
        return None if epoch % 2 else {"even": 1.0}

    class Scalars:
        def __init__(self):
            self.steps = {}

        def write_scalars(self, step, scalars):
            self.steps[step] = dict(scalars)

        def write_images(self, step, images):
            pass

        def close(self):
            pass

    config = Config(**{**TINY, "epochs": 3}, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    writer, callbacks = Scalars(), [my_metric, quiet_on_odd_epochs]
    stopped = train_and_evaluate(
        config, should_stop=lambda: len(seen) == 2, writers=[writer], callbacks=callbacks
    )
    assert stopped["stopped"] and stopped["my_metric"] == 4
    metrics = os.path.join(config.workdir, workdir.METRICS_FILE)
    assert [(r["epoch"], r["my_metric"]) for r in workdir.read_metrics(metrics)] == [(1, 2), (2, 4)]
    assert writer.steps[2]["my_metric"] == 4 and writer.steps[2]["even"] == 1.0
    assert "even" not in writer.steps[1]
    # The same call without the stop resumes from the checkpoint of epoch 2.
    train_and_evaluate(config, writers=[Scalars()], callbacks=callbacks)
    records = workdir.read_metrics(metrics)
    assert [(r["epoch"], r["my_metric"]) for r in records] == [(1, 2), (2, 4), (3, 6)]
    assert all(np.isfinite(r["param_norm"]) and r["param_norm"] > 0 for r in records)
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3]
    assert seen[0][2] == jax.tree.structure(workdir.load_model(config.workdir).params)


def test_a_callback_that_returns_no_numbers_is_refused(idx_dir, tmp_path):
    config = Config(**TINY, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    with pytest.raises(ValueError, match="callback bad returned 'x': 'text'"):
        train_and_evaluate(config, callbacks=[bad])
    with pytest.raises(ValueError, match="'test_elbo', a name the run's record uses"):
        train_and_evaluate(
            dataclasses.replace(config, overwrite=True),
            callbacks=[lambda epoch, record, params: {"test_elbo": 0.0}],
        )


def bad(epoch, record, params):
    return {"x": "text"}


def test_early_stopping_ends_the_run_after_its_patience_and_is_finished(idx_dir, tmp_path):
    # A learning rate too small to improve on epoch 1's validation ELBO... then patience 2:
    # the run ends at epoch 3, writes its outputs, and a second call finds it finished.
    settings = dict(num_valid=256, epochs=10, early_stop_patience=2, learning_rate=1e-9)
    records = tiny_run(idx_dir, tmp_path, **settings)
    best = int(np.argmin([r["valid_elbo"] for r in records])) + 1
    assert records[-1]["epoch"] == best + 2 < 10 and records[-1]["early_stopped"] is True
    assert all("early_stopped" not in r for r in records[:-1])
    folder = tmp_path / "w"
    assert (folder / workdir.PARAMS_FILE).exists() and (folder / workdir.SAMPLES_FILE).exists()
    again = train_and_evaluate(
        Config(**{**TINY, **settings}, data_dir=str(idx_dir), workdir=str(folder))
    )
    assert again["finished"] and again["epoch"] == records[-1]["epoch"]


def test_early_stopping_waits_for_the_kl_warm_up():
    from vae_jax.run import BestEpoch

    config = Config(num_valid=10, early_stop_patience=3, beta_schedule="linear", warmup_epochs=5)
    best = BestEpoch.of(config, [{"epoch": 1, "valid_elbo": 100.0}])
    for epoch in range(2, 8):
        best.update({"epoch": epoch, "valid_elbo": 101.0})
        assert best.exhausted(epoch) == (epoch >= 8)  # 3 epochs past the warm-up's 5
    best.update({"epoch": 8, "valid_elbo": 101.0})
    assert best.exhausted(8)
    with pytest.raises(InputError, match="add --num_valid"):
        Config(early_stop_patience=5).validate()


def test_no_function_of_the_package_is_over_60_lines():
    import ast
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[1] / "vae_jax"
    long = [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


# --- Contracts at the edges -----------------------------------------------------------------


def test_a_callback_may_keep_the_params_it_is_given(idx_dir, tmp_path):
    kept = {}

    def keep(epoch, record, params):
        kept[epoch] = params

    config = Config(**{**TINY, "epochs": 3}, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    train_and_evaluate(config, callbacks=[keep])
    norms = [float(optax.tree.norm(kept[epoch])) for epoch in (1, 2, 3)]  # none deleted
    assert len(set(norms)) == 3  # each epoch's own parameters
    final = workdir.load_model(config.workdir).params
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(kept[3]), final)


@pytest.mark.parametrize("name", sorted(run_module.RECORD_KEYS))
def test_a_callback_may_not_return_a_name_the_run_uses(name, tmp_path):
    with pytest.raises(ValueError, match=f"returned '{name}', a name the run's record uses"):
        run_module.callback_numbers([lambda e, r, p: {name: True}], 1, {"epoch": 1}, None)


def test_early_stopped_by_a_callback_is_refused_not_obeyed(idx_dir, tmp_path):
    config = Config(**{**TINY, "epochs": 3}, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    with pytest.raises(ValueError, match="'early_stopped', a name the run's record uses"):
        train_and_evaluate(config, callbacks=[lambda e, r, p: {"early_stopped": True}])


def test_an_early_stopped_run_goes_on_under_a_larger_patience(idx_dir, tmp_path):
    settings = dict(num_valid=256, epochs=8, early_stop_patience=1, learning_rate=1e-9)
    records = tiny_run(idx_dir, tmp_path, **settings)
    stopped_at = records[-1]["epoch"]
    assert records[-1]["early_stopped"] and stopped_at < 8
    longer = {**settings, "early_stop_patience": 3}
    records = tiny_run(idx_dir, tmp_path, **longer)
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]["epoch"] > stopped_at and records[-1].get("early_stopped")
    assert sum("early_stopped" in r for r in records) == 1  # the first stop is undone
    config = Config(**{**TINY, **longer}, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    assert train_and_evaluate(config)["finished"]  # and a third call answers at once


def test_should_finish_ends_a_run_for_good(idx_dir, tmp_path):
    config = Config(**{**TINY, "epochs": 6}, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    seen = []
    record = train_and_evaluate(
        config,
        callbacks=[lambda epoch, record, params: seen.append(epoch)],
        should_finish=lambda: len(seen) == 2,
    )
    assert record["epoch"] == 2 and record["finished_early"] and not record.get("stopped")
    assert workdir.load_model(config.workdir).params is not None  # a finished run
    again = train_and_evaluate(config)
    assert again["finished"] and again["epoch"] == 2


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    bad_data = tmp_path / "data"
    bad_data.mkdir()
    (bad_data / "train-images-idx3-ubyte").write_bytes(b"not idx")
    config = Config(**TINY, data_dir=str(bad_data), workdir=str(tmp_path / "runs" / "w"))
    with pytest.raises(InputError, match="not a uint8 IDX file|but no"):
        train_and_evaluate(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
