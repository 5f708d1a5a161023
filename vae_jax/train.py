"""Training: the jitted step, a whole epoch as one compiled `lax.scan`, and the run.

Keys: one root key per run, split once into init / train / eval / sample keys. Epoch e
uses `fold_in(train_key, e)`, split into the shuffle key and the step root; step i of
the epoch uses `fold_in(step_root, i)`, split into the binarization and z keys. The eval
and sample keys are the same every epoch. So a run is a pure function of its config.
"""

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from vae_jax import checkpoint, data, parallel, plots
from vae_jax.config import Config, config_from_dict, prepare_workdir
from vae_jax.errors import InputError
from vae_jax.losses import free_bits_kl, negative_elbo, negative_iwae_bound
from vae_jax.models import VAE, conv_image_side, reconstruct_images, sample_images
from vae_jax.schedules import BetaSchedule, beta_schedule

# Files a run writes in its workdir.
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
SAMPLES_FILE = "samples.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
LOSS_CURVES_FILE = "loss_curves.png"
OUTPUTS = (
    METRICS_FILE,
    CONFIG_FILE,
    PARAMS_FILE,
    SAMPLES_FILE,
    RECONSTRUCTIONS_FILE,
    LOSS_CURVES_FILE,
)

NUM_SAMPLES = 64  # digits in samples.png
NUM_RECONSTRUCTIONS = 16  # test images in reconstructions.png


class RunKeys(NamedTuple):
    """The keys of a run, all split from its seed."""

    init: jax.Array  # parameter initialisation
    train: jax.Array  # folded with the epoch: order, binarization, z draws
    eval: jax.Array  # the test-set z draws, the same every epoch
    sample: jax.Array  # the z of samples.png


def run_keys(seed: int) -> RunKeys:
    """Splits the root key of `seed` into the run's keys."""
    return RunKeys(*jax.random.split(jax.random.key(seed), 4))


def create_train_state(model: VAE, key: jax.Array, learning_rate: float) -> train_state.TrainState:
    """Initialises the model's parameters from `key` and an Adam optimiser."""
    init_key, z_key = jax.random.split(key)
    dummy_images = jnp.zeros((1, model.image_size), jnp.float32)
    params = model.init(init_key, dummy_images, z_key)["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.adam(learning_rate)
    )
    # TrainState.create starts `step` as a Python int, which would make the first and
    # later calls of a jitted step different programs: start it as the int32 it becomes.
    return state.replace(step=jnp.zeros((), jnp.int32))


def loss_fn(
    params,
    apply_fn,
    images: jax.Array,
    key: jax.Array,
    beta: float | jax.Array,
    weights: jax.Array,
    reconstruction: str,
    recon_scale: float,
    objective: str = "elbo",
    num_samples: int = 1,
    free_bits: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's loss to minimise, and the weighted means of its terms as metrics.

    objective "elbo": recon + beta * KL with one z per image (KL in closed form); with
    `free_bits` > 0 the KL term is `free_bits_kl` instead (the logged `kl` stays the
    true one). "iwae": -L_k with k = `num_samples` draws per image.

    images: [batch, pixels]; weights: [batch], 1 for real images and 0 for padding.
    """
    variables = {"params": params}
    if objective == "iwae":
        logits, z, mean, logvar = apply_fn(
            variables, images, key, num_samples, method="decode_samples"
        )
        terms = negative_iwae_bound(
            logits, images, z, mean, logvar, beta, reconstruction, recon_scale
        )
    else:
        logits, mean, logvar = apply_fn(variables, images, key)
        terms = negative_elbo(logits, images, mean, logvar, beta, reconstruction, recon_scale)
    num_images = jnp.sum(weights)
    metrics = {
        name: jnp.sum(weights * value) / num_images for name, value in terms._asdict().items()
    }
    loss = metrics["loss"]
    if free_bits > 0:
        loss = metrics["recon"] + beta * free_bits_kl(mean, logvar, weights, free_bits)
    return loss, metrics


LOSS_OPTIONS = ("reconstruction", "recon_scale", "objective", "num_samples", "free_bits")


@functools.partial(jax.jit, static_argnames=LOSS_OPTIONS, donate_argnames=("state",))
def train_step(
    state: train_state.TrainState,
    images: jax.Array,
    key: jax.Array,
    beta: float | jax.Array = 1.0,
    weights: jax.Array | None = None,
    *,
    reconstruction: str = "bernoulli",
    recon_scale: float = 0.1,
    objective: str = "elbo",
    num_samples: int = 1,
    free_bits: float = 0.0,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """One Adam step on the objective (see `loss_fn`) for a batch.

    Args:
      state: parameters and optimiser state (donated: do not reuse the one passed in).
      images: [batch, pixels] in [0, 1].
      key: PRNG key of this step's z draws.
      beta: weight of the KL term.
      weights: optional [batch] 0/1 mask of the images that count (for a padded batch).

    Returns:
      The new state, and the batch means of `loss`, `recon` and `kl` in nats per image.
    """
    if weights is None:
        weights = jnp.ones(images.shape[:1], jnp.float32)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(
        state.params,
        state.apply_fn,
        images,
        key,
        beta,
        weights,
        reconstruction,
        recon_scale,
        objective,
        num_samples,
        free_bits,
    )
    return state.apply_gradients(grads=grads), metrics


EPOCH_OPTIONS = ("batch_size", "binarization", "on_nan", "mesh", "schedule", *LOSS_OPTIONS)


@functools.partial(jax.jit, static_argnames=EPOCH_OPTIONS, donate_argnames=("state",))
def train_epoch(
    state: train_state.TrainState,
    train_images: jax.Array,
    epoch_key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    batch_size: int = 256,
    binarization: str = "none",
    reconstruction: str = "bernoulli",
    recon_scale: float = 0.1,
    on_nan: str = "stop",
    mesh: Mesh | None = None,
    schedule: BetaSchedule = BetaSchedule(),
    objective: str = "elbo",
    num_samples: int = 1,
    free_bits: float = 0.0,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """One shuffled pass over `train_images` as a single compiled loop.

    Every image is used once per epoch: the last batch is padded and the padding masked
    out, as PyTorch's DataLoader (without drop_last) would do with a short last batch.

    Args:
      train_images: [num_images, pixels] uint8, resident on the device.
      epoch_key: this epoch's key; it fixes the order, the binarization and the z draws.
      beta: the KL weight; step t uses beta * schedule(t).

      on_nan: "stop" trains on regardless and reports the first bad step, for the caller
        to stop; "skip_batch" keeps the previous state whenever a step's loss or new
        parameters are not finite, and counts those batches.
      mesh: a `parallel.data_mesh()` to split each batch over its devices (state and
        `train_images` replicated over it); None runs where the inputs are. The numbers
        are the same either way up to float summation order: every random draw is made
        for the whole batch, whatever the split.

    Returns:
      The new state and the epoch means of `loss`, `recon`, `kl` (nats per image, over
      the batches kept), `first_nonfinite_step` (-1 if none), `params_finite` (0 or 1),
      `skipped_batches`, and `beta`, the KL weight of the epoch's last step.
    """
    step_options = dict(
        binarization=binarization,
        reconstruction=reconstruction,
        recon_scale=recon_scale,
        on_nan=on_nan,
        mesh=mesh,
        schedule=schedule,
        objective=objective,
        num_samples=num_samples,
        free_bits=free_bits,
    )
    step_root, batch_indices, batch_weights = _epoch_batches(
        train_images.shape[0], batch_size, epoch_key
    )

    def step(state, inputs):
        return _epoch_step(state, train_images, step_root, beta, *inputs, **step_options)

    num_steps = len(batch_indices)
    state, step_outputs = jax.lax.scan(
        step, state, (jnp.arange(num_steps), batch_indices, batch_weights)
    )
    return state, _epoch_metrics(state, step_outputs)


def train_epoch_stepwise(
    state: train_state.TrainState,
    train_images: jax.Array,
    epoch_key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    batch_size: int = 256,
    **options,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """`train_epoch` with one compiled program per step instead of one per epoch.

    The same batches, draws and metrics, for programs that XLA runs slowly inside a loop:
    on the CPU, convolutions inside `lax.scan` run about 13x slower than the same step
    called on its own (measured: 2.3 s against 0.18 s a step for the conv VAE).
    """
    step_root, batch_indices, batch_weights = _epoch_batches_jit(
        train_images.shape[0], batch_size, epoch_key
    )
    step_outputs = []
    for step_index in range(len(batch_indices)):
        state, outputs = _epoch_step_jit(
            state,
            train_images,
            step_root,
            beta,
            jnp.int32(step_index),
            batch_indices[step_index],
            batch_weights[step_index],
            **options,
        )
        step_outputs.append(outputs)
    stacked = jax.tree.map(lambda *values: jnp.stack(values), *step_outputs)
    return state, _epoch_metrics_jit(state, stacked)


def _epoch_batches(num_images: int, batch_size: int, epoch_key: jax.Array):
    """The epoch's step key root, and its batches: [steps, batch] indices and 0/1 weights."""
    num_steps = -(-num_images // batch_size)
    shuffle_key, step_root = jax.random.split(epoch_key)
    order = jax.random.permutation(shuffle_key, num_images)
    padding = num_steps * batch_size - num_images
    batch_indices = jnp.pad(order, (0, padding)).reshape(num_steps, batch_size)
    batch_weights = (jnp.arange(num_steps * batch_size) < num_images).astype(jnp.float32)
    return step_root, batch_indices, batch_weights.reshape(num_steps, batch_size)


def _epoch_step(
    state,
    train_images,
    step_root,
    beta,
    step_index,
    indices,
    weights,
    *,
    binarization: str = "none",
    on_nan: str = "stop",
    mesh: Mesh | None = None,
    schedule: BetaSchedule = BetaSchedule(),
    **loss_options,
):
    """Step `step_index` of an epoch: the batch's images, draws and update, and its sums."""
    if mesh is not None:  # Each device gathers and trains on its slice of the batch.
        indices = jax.lax.with_sharding_constraint(indices, parallel.batch_sharded(mesh))
    binarize_key, z_key = jax.random.split(jax.random.fold_in(step_root, step_index))
    images = data.to_unit_interval(train_images[indices])
    if binarization == "dynamic":
        images = data.binarize(binarize_key, images)
    step_beta = beta * schedule(state.step)
    new_state, metrics = train_step(state, images, z_key, step_beta, weights, **loss_options)
    finite = jnp.isfinite(metrics["loss"])
    if on_nan == "skip_batch":
        finite &= _all_finite(new_state.params)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    # Batch means back to sums, so the epoch mean weighs every kept image once.
    num_kept = jnp.sum(weights) * finite
    sums = {name: jnp.where(finite, value, 0.0) * num_kept for name, value in metrics.items()}
    return new_state, (sums, num_kept, finite, step_beta)


def _epoch_metrics(state, step_outputs) -> dict[str, jax.Array]:
    """The epoch's metrics from the stacked per-step outputs of `_epoch_step`."""
    step_sums, step_kept, step_finite, step_betas = step_outputs
    num_kept = jnp.maximum(jnp.sum(step_kept), 1.0)
    epoch_metrics = {name: jnp.sum(sums) / num_kept for name, sums in step_sums.items()}
    epoch_metrics["first_nonfinite_step"] = jnp.where(
        jnp.all(step_finite), -1, jnp.argmin(step_finite)
    )
    epoch_metrics["params_finite"] = _all_finite(state.params)
    epoch_metrics["skipped_batches"] = jnp.sum(~step_finite)
    epoch_metrics["beta"] = step_betas[-1]
    return epoch_metrics


_epoch_batches_jit = jax.jit(_epoch_batches, static_argnums=(0, 1))
_epoch_step_jit = jax.jit(
    _epoch_step,
    static_argnames=tuple(name for name in EPOCH_OPTIONS if name != "batch_size"),
    donate_argnames=("state",),
)
_epoch_metrics_jit = jax.jit(_epoch_metrics)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_and_evaluate(
    config: Config, should_stop: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """Trains a VAE as `config` says, writing metrics, pictures and parameters to its workdir.

    Trains data-parallel over every device (`vae_jax.parallel`); in a multi-process run
    every process calls this, and process 0 alone writes files and prints.

    A workdir holding a checkpoint resumes from its newest one: the result is the same,
    bit for bit, as a run that was never interrupted. `should_stop` is polled after each
    epoch; when it returns True (in any process) the run writes a checkpoint and returns
    early.

    Returns the last epoch's metrics record, with `"stopped": True` after an early stop.
    Raises InputError, before any training and without touching an earlier run's files,
    when the config, data or checkpoint are unusable, and after writing the metrics of
    the epoch where training diverged (the last good checkpoint stays in place).
    """
    # Imported here, not at the top: `import vae_jax` must not import vae_jax.evaluate,
    # which `python -m vae_jax.evaluate` runs as a script.
    from vae_jax.evaluate import elbo_terms

    config.validate()
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    writer = parallel.is_writer()
    log = functools.partial(print, flush=True) if writer else lambda *_: None
    workdir = config.workdir
    resuming = checkpoint.has_checkpoint(workdir) and not config.overwrite
    # The same run stopped before its first checkpoint: start it again (it is a pure
    # function of its config, so nothing is lost).
    restarting = not resuming and is_same_run(workdir, config)
    prepare_workdir(config, () if resuming or restarting else OUTPUTS)
    dataset = data.load_dataset(
        config.dataset, config.data_dir, config.num_train, allow_download=config.download
    )
    num_train = len(dataset.train_images)
    if config.batch_size > num_train:
        raise InputError(
            f"--batch_size={config.batch_size} is larger than the {num_train} training "
            "images; lower --batch_size"
        )
    model = build_model(config, dataset.image_shape)
    keys = run_keys(config.seed)
    state = create_train_state(model, keys.init, config.learning_rate)
    state, train_key, eval_key = parallel.put_replicated((state, keys.train, keys.eval), mesh)
    metrics_path = os.path.join(workdir, METRICS_FILE)
    checkpoint_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    # Every process has decided from the same files: from here on, process 0 changes them.
    parallel.barrier("workdir checked")
    if writer and resuming:
        checkpoint.remove_unfinished(workdir)  # Its epoch is redone and saved again.
    elif writer and os.path.isdir(checkpoint_dir):
        shutil.rmtree(checkpoint_dir)  # --overwrite, or a restart's unfinished checkpoint
    parallel.barrier("checkpoints tidied")
    checkpoints = checkpoint.manager(workdir, config.keep_checkpoints)
    history, first_epoch = [], 1
    if resuming:
        state, train_key, last_epoch = checkpoint.restore_latest(
            checkpoints, state, train_key, config
        )
        history = read_metrics(metrics_path, up_to_epoch=last_epoch)
        first_epoch = last_epoch + 1

    # Everything is validated: from here on, files are written.
    if writer:
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json() + "\n")
        # Keep the metrics of the checkpointed epochs, drop any written after the checkpoint.
        write_metrics(metrics_path, history)
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
        log(f"resuming from the checkpoint of epoch {first_epoch - 1} in {workdir}")

    # Every device holds the uint8 training set (47 MB for MNIST) and gathers its own
    # slice of each global batch from it, so no batch crosses the host-device link.
    train_images = parallel.put_replicated(dataset.train_images, mesh)
    host_test_images = data.eval_inputs(dataset.test_images, config.binarization)
    test_images = parallel.put_replicated(host_test_images, mesh)
    beta = parallel.put_replicated(np.float32(config.beta), mesh)
    loss_options = dict(reconstruction=config.reconstruction, recon_scale=config.recon_scale)
    steps_per_epoch = -(-num_train // config.batch_size)
    schedule = beta_schedule(
        config.beta_schedule,
        steps_per_epoch,
        config.epochs,
        config.warmup_epochs,
        config.num_cycles,
        config.cycle_ramp,
    )

    epoch_options = dict(
        batch_size=config.batch_size,
        binarization=config.binarization,
        on_nan=config.on_nan,
        mesh=mesh,
        schedule=schedule,
        objective=config.objective,
        num_samples=config.num_samples,
        free_bits=config.free_bits,
        **loss_options,
    )
    epoch_loop = config.epoch_loop
    if epoch_loop == "auto":
        on_cpu = jax.devices()[0].platform == "cpu"
        epoch_loop = "steps" if config.architecture == "conv" and on_cpu else "scan"
    # Compile ahead of time, so compilation is timed apart from training (the stepwise
    # loop compiles its step on the first call, inside the first epoch's time).
    compile_start = time.perf_counter()
    if epoch_loop == "scan":
        run_epoch = train_epoch.lower(
            state, train_images, train_key, beta, **epoch_options
        ).compile()
    else:
        run_epoch = functools.partial(train_epoch_stepwise, **epoch_options)
    run_eval = elbo_terms.lower(
        model, state.params, test_images, eval_key, beta, **loss_options
    ).compile()
    compile_time_s = time.perf_counter() - compile_start

    for epoch in range(first_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        state, train_metrics = run_epoch(
            state, train_images, jax.random.fold_in(train_key, epoch), beta
        )
        train_metrics = jax.device_get(train_metrics)  # Waits for the epoch to finish.
        epoch_time_s = time.perf_counter() - epoch_start
        test_terms = jax.device_get(run_eval(state.params, test_images, eval_key, beta))
        record = {
            "epoch": epoch,
            "train_loss": float(train_metrics["loss"]),
            "train_recon": float(train_metrics["recon"]),
            "train_kl": float(train_metrics["kl"]),
            "beta": float(train_metrics["beta"]),
            "test_loss": float(np.mean(test_terms.loss)),
            "test_recon": float(np.mean(test_terms.recon)),
            "test_kl": float(np.mean(test_terms.kl)),
            "epoch_time_s": epoch_time_s,
            "images_per_s": num_train / epoch_time_s,
        }
        if config.on_nan == "skip_batch":
            record["skipped_batches"] = int(train_metrics["skipped_batches"])
        if epoch == first_epoch:
            record["compile_time_s"] = compile_time_s
        history.append(record)
        if writer:
            write_metrics(metrics_path, [record], append=True)
        bad_step = int(train_metrics["first_nonfinite_step"])
        if bad_step >= 0 and config.on_nan == "stop" or not train_metrics["params_finite"]:
            bad_step = max(bad_step, 0)
            kept = max(checkpoint.complete_epochs(workdir), default=None)
            raise InputError(
                f"training diverged: non-finite loss or parameters at epoch {epoch}, step "
                f"{bad_step} of {steps_per_epoch} (global step "
                f"{(epoch - 1) * steps_per_epoch + bad_step}); "
                + (f"the checkpoint of epoch {kept} is kept; " if kept else "no checkpoint yet; ")
                + "lower --learning_rate, or pass --on_nan=skip_batch"
            )
        log(format_progress(record, config.epochs))
        stop = parallel.any_process(should_stop())
        if stop or epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            checkpoint.save(checkpoints, epoch, state, train_key, config)
        if stop and epoch < config.epochs:
            log(
                f"stopped after epoch {epoch}: checkpoint written to {checkpoint_dir}; "
                "run the same command to resume"
            )
            return {**record, "stopped": True}

    host_params = jax.device_get(state.params)
    if writer:
        with open(os.path.join(workdir, PARAMS_FILE), "wb") as f:
            f.write(flax.serialization.to_bytes(host_params))
        # On this process's first device, from host copies: the other processes are done.
        write_pictures(
            model,
            host_params,
            host_test_images,
            keys.sample,
            dataset.image_shape,
            history,
            workdir,
        )
    log(f"wrote {', '.join(OUTPUTS)} to {workdir}")
    parallel.barrier("run written")
    return history[-1]


def is_same_run(workdir: str, config: Config) -> bool:
    """Whether `workdir` holds the config.json of a run that `config` may continue."""
    try:
        with open(os.path.join(workdir, CONFIG_FILE)) as f:
            saved = config_from_dict(json.load(f))
        checkpoint.check_compatible(saved, config)
    except (OSError, ValueError, TypeError, InputError):
        return False
    return True


def build_model(config: Config, image_shape: tuple[int, ...]) -> VAE:
    """The VAE a config describes, for images of `image_shape`."""
    image_size = int(np.prod(image_shape))
    if config.architecture == "conv":
        try:
            conv_image_side(image_size, len(config.conv_channels))
        except ValueError:
            num_layers = len(config.conv_channels)
            raise InputError(
                f"--architecture=conv with {num_layers} --conv_channels needs square "
                f"one-channel images whose side divides by {2**num_layers}, got {image_shape}; "
                "use --architecture=mlp or fewer --conv_channels"
            ) from None
    return VAE(
        config.latent,
        config.hidden_sizes,
        image_size,
        jnp.dtype(config.dtype),
        config.architecture,
        config.conv_channels,
    )


def read_metrics(path: str, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` for epochs 1 .. up_to_epoch (all when None), in order.

    Raises InputError if `up_to_epoch` is given and an epoch up to it is missing.
    """
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # A line cut by a crash: it and what follows are redone.
                if up_to_epoch is not None and record.get("epoch", 0) > up_to_epoch:
                    break
                records.append(record)
    if up_to_epoch is None:
        return records
    if [r["epoch"] for r in records] != list(range(1, up_to_epoch + 1)):
        raise InputError(
            f"{path} lacks epochs of the checkpointed run (has {len(records)} of {up_to_epoch}); "
            "restore that file, or start afresh with --overwrite"
        )
    return records


def write_metrics(path: str, records: list[dict[str, Any]], append: bool = False) -> None:
    """Appends records, or replaces the file atomically (a crash leaves old or new)."""
    lines = "".join(json.dumps(record) + "\n" for record in records)
    if append:
        with open(path, "a") as f:
            f.write(lines)
        return
    with open(path + ".tmp", "w") as f:
        f.write(lines)
    os.replace(path + ".tmp", path)


def write_pictures(model, params, test_images, sample_key, image_shape, history, workdir):
    """samples.png, reconstructions.png and loss_curves.png in `workdir`."""
    samples = sample_images(model, params, sample_key, NUM_SAMPLES)
    plots.save_image_grid(samples, image_shape, os.path.join(workdir, SAMPLES_FILE))
    originals = test_images[:NUM_RECONSTRUCTIONS]
    plots.save_reconstructions(
        originals,
        reconstruct_images(model, params, originals),
        image_shape,
        os.path.join(workdir, RECONSTRUCTIONS_FILE),
    )
    plots.save_loss_curves(history, os.path.join(workdir, LOSS_CURVES_FILE))


def format_progress(record: dict[str, Any], num_epochs: int) -> str:
    """One console line for an epoch's metrics record."""
    return (
        f"epoch {record['epoch']:>3}/{num_epochs}  train {record['train_loss']:8.3f}  "
        f"test {record['test_loss']:8.3f} (recon {record['test_recon']:.3f}, "
        f"kl {record['test_kl']:.3f})  beta {record.get('beta', 1.0):.3g}  "
        f"{record['epoch_time_s']:.3f} s  {record['images_per_s']:,.0f} images/s"
    )
