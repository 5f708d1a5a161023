"""One training run in its workdir: `train_and_evaluate(config)`.

What `python -m vae_jax.main` runs. It builds the model, objective and optimiser from
the config, trains epoch by epoch with `vae_jax.train`, scores the test set after each
epoch with `vae_jax.bounds`, and keeps the workdir (`vae_jax.workdir`): the lock, the
config, the metrics, checkpoints (`vae_jax.checkpoint`) and the pictures at the end.
"""

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import bounds, checkpoint, data, parallel, plots, summaries, train, workdir
from vae_jax.config import Config, check_compatible
from vae_jax.errors import InputError
from vae_jax.models import reconstruct_images, sample_images, with_dtype

NUM_SAMPLES = 64  # digits in samples.png
NUM_RECONSTRUCTIONS = 16  # test images in reconstructions.png


def train_and_evaluate(
    config: Config,
    should_stop: Callable[[], bool] = lambda: False,
    writers: Sequence[summaries.Writer] = (),
) -> dict[str, Any]:
    """Trains a VAE as `config` says, writing metrics, pictures and parameters to its workdir.

    Trains data-parallel over every device (`vae_jax.parallel`); in a multi-process run
    every process calls this, and process 0 alone writes files and prints.

    A workdir holding a checkpoint resumes from its newest one: the result is the same,
    bit for bit, as a run that was never interrupted. `should_stop` is polled after each
    epoch; when it returns True (in any process) the run writes a checkpoint and returns
    early. The workdir is locked for the whole run (`workdir.lock`).

    Each epoch's metrics record also goes to `writers` (`vae_jax.summaries.Writer`: W&B,
    MLflow, ...) and, with `config.tensorboard`, to TensorBoard event files, from
    process 0 only.

    Returns the last epoch's metrics record, with `"stopped": True` after an early stop.
    Raises InputError, before any training and without touching an earlier run's files,
    when the config, data or checkpoint are unusable or another process uses the
    workdir, and after writing the metrics of the epoch where training diverged (the
    last good checkpoint stays in place).
    """
    config.validate()
    finished = finished_run(config)
    if finished is not None:
        return finished
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    resuming = checkpoint.has_checkpoint(config.workdir) and not config.overwrite
    # The same run stopped before its first checkpoint: start it again (it is a pure
    # function of its config, so nothing is lost).
    restarting = not resuming and workdir.is_same_run(config.workdir, config)
    outputs = (*workdir.OUTPUTS, workdir.BEST_PARAMS_FILE)
    workdir.prepare(config, () if resuming or restarting else outputs)
    with _hold(config.workdir), contextlib.ExitStack() as closing:
        return _train_and_evaluate(config, should_stop, mesh, resuming, writers, closing)


def finished_run(config: Config) -> dict[str, Any] | None:
    """Checks `config` against the run in its workdir from config.json, before any work.

    Returns the last metrics record of a run finished there with these flags (at least
    `config.epochs` epochs, its parameters written), saying so in one line and touching
    no file; None when there is a run to train. Raises InputError when the workdir holds
    a checkpoint of a run that these flags may not resume. Reads two small files only,
    so the answer comes before any data is read or model built.
    """
    folder = config.workdir
    if config.overwrite or not checkpoint.has_checkpoint(folder):
        return None
    saved, _ = workdir.read_config(folder)
    check_compatible(saved, config)
    metrics_path = os.path.join(folder, workdir.METRICS_FILE)
    if not os.path.isfile(os.path.join(folder, workdir.PARAMS_FILE)) or not os.path.isfile(
        metrics_path
    ):
        return None
    history = workdir.read_metrics(metrics_path)
    last_epoch = max(checkpoint.complete_epochs(folder))
    if not history or min(last_epoch, history[-1]["epoch"]) < config.epochs:
        return None
    if parallel.is_writer():
        print(
            f"finished: epoch {history[-1]['epoch']} of {config.epochs} in {folder}; "
            "--epochs=N to train longer, --overwrite to start again",
            flush=True,
        )
    return {**history[-1], "finished": True}


@contextlib.contextmanager
def _hold(folder: str) -> Iterator[None]:
    """Process 0 locks `folder`; every process raises the InputError if it cannot."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if parallel.is_writer():
            try:
                stack.enter_context(workdir.lock(folder))
            except InputError as e:
                refusal = e
        if parallel.any_process(refusal is not None):
            raise refusal or InputError(f"--workdir={folder} is in use by another run")
        yield


def _train_and_evaluate(config, should_stop, mesh, resuming, writers, closing) -> dict[str, Any]:
    writer = parallel.is_writer()
    log = functools.partial(print, flush=True) if writer else lambda *_: None
    folder = config.workdir
    dataset = data.load_dataset(
        config.dataset,
        config.data_dir,
        0 if config.num_valid else config.num_train,  # the held-out images are the last
        allow_download=config.download,
    )
    if config.num_valid:
        dataset, valid_images = data.split_validation(dataset, config.num_valid, config.num_train)
    num_train = len(dataset.train_images)
    if config.batch_size > num_train:
        raise InputError(
            f"--batch_size={config.batch_size} is larger than the {num_train} training "
            "images; lower --batch_size"
        )
    steps_per_epoch = -(-num_train // config.batch_size)
    model = config.build_model(dataset.image_shape)
    eval_model = with_dtype(model, jnp.float32)  # Scored in float32 whatever --dtype.
    objective = config.build_objective(steps_per_epoch)
    learning_rate_fn = config.learning_rate_fn(steps_per_epoch)
    keys = train.run_keys(config.seed)
    state = train.create_train_state(
        model, keys.init, config.build_optimizer(steps_per_epoch), config.ema_decay
    )
    state, train_key, eval_key = parallel.put_replicated((state, keys.train, keys.eval), mesh)
    metrics_path = os.path.join(folder, workdir.METRICS_FILE)
    checkpoint_dir = os.path.join(folder, checkpoint.CHECKPOINT_DIR)
    # Every process has decided from the same files: from here on, process 0 changes them.
    parallel.barrier("workdir checked")
    if writer and resuming:
        checkpoint.remove_unfinished(folder)  # Its epoch is redone and saved again.
    elif writer:  # --overwrite, or a restart: its unfinished checkpoint and curves go
        for name in (checkpoint.CHECKPOINT_DIR, summaries.TENSORBOARD_DIR):
            if os.path.isdir(os.path.join(folder, name)):
                shutil.rmtree(os.path.join(folder, name))
    parallel.barrier("checkpoints tidied")
    checkpoints = checkpoint.manager(folder, config.keep_checkpoints)
    history, first_epoch = [], 1
    if resuming:
        state, train_key, last_epoch = checkpoint.restore_latest(
            checkpoints, state, train_key, config
        )
        history = workdir.read_metrics(metrics_path, up_to_epoch=last_epoch)
        first_epoch = last_epoch + 1

    # Everything is validated: from here on, files are written.
    if writer:
        workdir.write_config(folder, config, dataset.image_shape)
        # Keep the metrics of the checkpointed epochs, drop any written after the checkpoint.
        workdir.write_metrics(metrics_path, history)
    log(
        f"data: {dataset.source}: {num_train} train, {len(dataset.test_images)} test images "
        f"of shape {dataset.image_shape}"
    )
    log(
        f"devices: {mesh.devices.size} x {jax.devices()[0].device_kind} in "
        f"{jax.process_count()} process(es), {config.batch_size // mesh.devices.size} "
        f"images per device per step; matmuls in {config.dtype}"
    )
    if resuming:
        log(f"resuming from the checkpoint of epoch {first_epoch - 1} in {folder}")
    if config.num_valid:
        log(f"validation: the last {config.num_valid} training images, held out")

    # Every device holds the uint8 training set (47 MB for MNIST) and gathers its own
    # slice of each global batch from it, so no batch crosses the host-device link.
    train_images = parallel.put_replicated(dataset.train_images, mesh)
    host_test_images = data.eval_inputs(dataset.test_images, config.binarization)
    test_images = parallel.put_replicated(host_test_images, mesh)
    beta = parallel.put_replicated(np.float32(config.beta), mesh)
    epoch_options = dict(
        objective=objective,
        batch_size=config.batch_size,
        binarization=config.binarization,
        on_nan=config.on_nan,
        mesh=mesh,
    )
    epoch_loop = config.epoch_loop
    if epoch_loop == "auto":
        on_cpu = jax.devices()[0].platform == "cpu"
        epoch_loop = "steps" if config.architecture == "conv" and on_cpu else "scan"
    # Compile ahead of time, so compilation is timed apart from training (the stepwise
    # loop compiles its step on the first call, inside the first epoch's time).
    compile_start = time.perf_counter()
    log(f"compiling the training epoch and the evaluation ({config.objective}) ...")
    if epoch_loop == "scan":
        run_epoch = train.train_epoch.lower(
            state, train_images, train_key, beta, **epoch_options
        ).compile()
    else:
        run_epoch = functools.partial(train.train_epoch_stepwise, **epoch_options)
    run_eval = bounds.elbo_terms.lower(
        eval_model, state.eval_params, test_images, eval_key, beta, objective=objective, mesh=mesh
    ).compile()
    if config.num_valid:
        valid_inputs = parallel.put_replicated(
            data.eval_inputs(valid_images, config.binarization), mesh
        )
        valid_key = jax.random.fold_in(eval_key, 1)
        run_valid = bounds.elbo_terms.lower(
            eval_model,
            state.eval_params,
            valid_inputs,
            valid_key,
            beta,
            objective=objective,
            mesh=mesh,
        ).compile()
        best_valid_elbo = min((r["valid_elbo"] for r in history), default=np.inf)
    compile_time_s = time.perf_counter() - compile_start
    log(f"compiled in {compile_time_s:.1f} s")

    writers = list(writers) if writer else []
    if writer and config.tensorboard:
        tensorboard_dir = os.path.join(folder, summaries.TENSORBOARD_DIR)
        tensorboard = summaries.TensorBoardWriter(
            tensorboard_dir, first_epoch if resuming else None
        )
        writers.append(closing.enter_context(contextlib.closing(tensorboard)))

    for epoch in range(first_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        state, train_metrics = run_epoch(
            state, train_images, jax.random.fold_in(train_key, epoch), beta
        )
        train_metrics = jax.device_get(train_metrics)  # Waits for the epoch to finish.
        epoch_time_s = time.perf_counter() - epoch_start
        test_terms = jax.device_get(run_eval(state.eval_params, test_images, eval_key, beta))
        record = {
            "epoch": epoch,
            "train_objective": float(train_metrics["objective"]),
            "train_loss": float(train_metrics["loss"]),
            "train_recon": float(train_metrics["recon"]),
            "train_kl": float(train_metrics["kl"]),
            "beta": float(train_metrics["beta"]),
            "grad_norm": float(train_metrics["grad_norm"]),
            "learning_rate": float(learning_rate_fn(epoch * steps_per_epoch - 1)),
            "test_elbo": float(np.mean(test_terms.recon + test_terms.kl)),
            "test_loss": float(np.mean(test_terms.loss)),
            "test_recon": float(np.mean(test_terms.recon)),
            "test_kl": float(np.mean(test_terms.kl)),
            "epoch_time_s": epoch_time_s,
            "images_per_s": num_train / epoch_time_s,
        }
        if config.num_valid:
            valid_terms = jax.device_get(
                run_valid(state.eval_params, valid_inputs, valid_key, beta)
            )
            record["valid_elbo"] = float(np.mean(valid_terms.recon + valid_terms.kl))
        if config.on_nan == "skip_batch":
            record["skipped_batches"] = int(train_metrics["skipped_batches"])
        if epoch == first_epoch:
            record["compile_time_s"] = compile_time_s
        history.append(record)
        if writer:
            workdir.write_metrics(metrics_path, [record], append=True)
        bad_step = int(train_metrics["first_nonfinite_step"])
        if bad_step >= 0 and config.on_nan == "stop" or not train_metrics["params_finite"]:
            bad_step = max(bad_step, 0)
            kept = max(checkpoint.complete_epochs(folder), default=None)
            raise InputError(
                f"training diverged: non-finite loss or parameters at epoch {epoch}, step "
                f"{bad_step} of {steps_per_epoch} (global step "
                f"{(epoch - 1) * steps_per_epoch + bad_step}); "
                + (f"the checkpoint of epoch {kept} is kept; " if kept else "no checkpoint yet; ")
                + "lower --learning_rate, or pass --on_nan=skip_batch"
            )
        if config.num_valid and record["valid_elbo"] < best_valid_elbo:
            best_valid_elbo = record["valid_elbo"]
            if writer:  # Selected on the validation images only, never on the test set.
                workdir.write_params(
                    os.path.join(folder, workdir.BEST_PARAMS_FILE), state.eval_params
                )
        log(format_progress(record, config.epochs))
        send_images = epoch % config.tensorboard_images_every == 0 or epoch == config.epochs
        if writers and send_images:
            grids = summary_images(
                eval_model,
                jax.device_get(state.eval_params),
                host_test_images,
                keys.sample,
                dataset.image_shape,
            )
        for summary_writer in writers:
            summary_writer.write_scalars(epoch, summaries.scalars_of(record))
            if send_images:
                summary_writer.write_images(epoch, grids)
        stop = parallel.any_process(should_stop())
        if stop or epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            checkpoint.save(checkpoints, epoch, state, train_key, config)
        if stop and epoch < config.epochs:
            log(
                f"stopped after epoch {epoch}: checkpoint written to {checkpoint_dir}; "
                "run the same command to resume"
            )
            return {**record, "stopped": True}

    host_params = jax.device_get(state.eval_params)  # The moving average, with --ema_decay
    if writer:
        workdir.write_params(os.path.join(folder, workdir.PARAMS_FILE), host_params)
        # On this process's first device, from host copies: the other processes are done.
        write_pictures(
            eval_model,
            host_params,
            host_test_images,
            keys.sample,
            dataset.image_shape,
            history,
            folder,
        )
    log(f"wrote {', '.join(workdir.OUTPUTS)} to {folder}")
    parallel.barrier("run written")
    return history[-1]


def summary_images(model, params, test_images, sample_key, image_shape) -> dict[str, np.ndarray]:
    """The run's two grids, float32 [height, width, channels] in [0, 1].

    `samples`: NUM_SAMPLES digits decoded from z ~ p(z), 8 a row; `reconstructions`:
    NUM_RECONSTRUCTIONS test images above their reconstructions.
    """
    samples = sample_images(model, params, sample_key, NUM_SAMPLES)
    originals = test_images[:NUM_RECONSTRUCTIONS]
    pairs = np.concatenate([originals, np.asarray(reconstruct_images(model, params, originals))])
    return {
        "samples": plots.tile_images(samples, image_shape, num_columns=8),
        "reconstructions": plots.tile_images(pairs, image_shape, len(originals)),
    }


def write_pictures(
    model, params, test_images, sample_key, image_shape, history, folder: str
) -> None:
    """samples.png, reconstructions.png and loss_curves.png in `folder`."""
    grids = summary_images(model, params, test_images, sample_key, image_shape)
    plots.save_mosaic(grids["samples"], os.path.join(folder, workdir.SAMPLES_FILE))
    plots.save_mosaic(grids["reconstructions"], os.path.join(folder, workdir.RECONSTRUCTIONS_FILE))
    plots.save_loss_curves(history, os.path.join(folder, workdir.LOSS_CURVES_FILE))


def format_progress(record: dict[str, Any], num_epochs: int) -> str:
    """One console line for an epoch's metrics record."""
    return (
        f"epoch {record['epoch']:>3}/{num_epochs}  train {record['train_loss']:8.3f}  "
        f"test {record['test_loss']:8.3f} (recon {record['test_recon']:.3f}, "
        f"kl {record['test_kl']:.3f})  "
        + (f"valid {record['valid_elbo']:8.3f}  " if "valid_elbo" in record else "")
        + f"beta {record.get('beta', 1.0):.3g}  "
        f"{record['epoch_time_s']:.3f} s  {record['images_per_s']:,.0f} images/s"
    )
