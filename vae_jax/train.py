"""Training as pure functions: the state, the jitted step, and an epoch as one `lax.scan`.

Keys: one root key per run, split once into init / train / eval / sample keys. Epoch e
uses `fold_in(train_key, e)`, split into the shuffle key and the step root; step i of
the epoch uses `fold_in(step_root, i)`, split into the binarization and z keys. The eval
and sample keys are the same every epoch. So a run is a pure function of its config.

What a step minimises is an `Objective` (static); the optimiser is any optax
`GradientTransformation`, held by the state. The run around this (workdir, checkpoints,
metrics, pictures) is `vae_jax.run`.
"""

import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from vae_jax import data, parallel
from vae_jax.models import check_model, draw_noise, model_images, model_of
from vae_jax.objective import Objective


class RunKeys(NamedTuple):
    """The keys of a run, all split from its seed."""

    init: jax.Array  # parameter initialisation
    train: jax.Array  # folded with the epoch: order, binarization, z draws
    eval: jax.Array  # the test-set z draws, the same every epoch
    sample: jax.Array  # the z of samples.png


def run_keys(seed: int) -> RunKeys:
    """Splits the root key of `seed` into the run's keys."""
    return RunKeys(*jax.random.split(jax.random.key(seed), 4))


def _touch_every_parameter(model, images: jax.Array, key: jax.Array):
    draw = model.posterior(images, draw_noise(key, model.latent_sizes, images.shape[:-1]))
    return model.decode(draw.z), model.log_prior(draw.z)


@functools.partial(jax.jit, static_argnames=("model",))
def init_params(model, key: jax.Array):
    """The model's initial `params` collection, drawn from `key`.

    Runs the posterior, the prior and the decoder once on a blank image, so that every
    parameter is made (a VampPrior's pseudo-inputs too); jitted, as Flax's eager `init`
    dispatches each layer's initialiser on its own.
    """
    init_key, z_key = jax.random.split(key)
    dummy_images = jnp.zeros((1, model.image_size), jnp.float32)
    return model.init(init_key, dummy_images, z_key, method=_touch_every_parameter)["params"]


class TrainState(train_state.TrainState):
    """Flax's TrainState, with an exponential moving average of the parameters.

    With `ema_decay` > 0, each step sets ema <- d ema + (1 - d) params, with
    d = min(ema_decay, (1 + step) / (10 + step)): the warm-up of TensorFlow's
    ExponentialMovingAverage, so early steps do not drag in the initial parameters.
    The average is what a run evaluates and saves (Polyak averaging, as in BIVA, NVAE
    and VDVAE); training continues from `params`.
    """

    ema_params: Any = None
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads, **kwargs) -> "TrainState":
        new_state = super().apply_gradients(grads=grads, **kwargs)
        if not self.ema_decay:
            return new_state
        step = new_state.step.astype(jnp.float32)
        decay = jnp.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        ema_params = jax.tree.map(
            lambda ema, new: decay * ema + (1.0 - decay) * new, self.ema_params, new_state.params
        )
        return new_state.replace(ema_params=ema_params)

    @property
    def eval_params(self):
        """The parameters to evaluate: the moving average when there is one."""
        return self.params if self.ema_params is None else self.ema_params


def create_train_state(
    model,
    key: jax.Array,
    tx: optax.GradientTransformation,
    ema_decay: float = 0.0,
    *,
    params=None,
) -> TrainState:
    """The model's parameters initialised from `key`, and `tx`'s state for them.

    `tx` is any optax transformation, e.g. `optax.adam(1e-3)` (the reference's) or one
    from `vae_jax.optim.make_optimizer`. `ema_decay` > 0 keeps a moving average of the
    parameters (`TrainState.ema_params`). `params`: start from these instead of drawing
    them (to fine-tune a trained model: `vae_jax.pretrained.load(name).params`); the
    optimiser's state and the average start afresh.

    Raises ValueError if `model` lacks part of the model interface (docs/models.md), or
    if `params` is not a `params` collection of `model`'s shapes.
    """
    check_model(model)
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (0 is off), got {ema_decay}")
    params = init_params(model, key) if params is None else _checked_params(model, params)
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx,
        ema_params=jax.tree.map(jnp.copy, params) if ema_decay else None,
        ema_decay=ema_decay,
    )
    # TrainState.create starts `step` as a Python int, which would make the first and
    # later calls of a jitted step different programs: start it as the int32 it becomes.
    return state.replace(step=jnp.zeros((), jnp.int32))


def check_not_donated(state: TrainState) -> None:
    """Raises ValueError if `state` was donated to an earlier step, whose program took
    over its buffers: it is the state that step returned that lives on."""
    if any(
        isinstance(leaf, jax.Array) and leaf.is_deleted() for leaf in jax.tree.leaves(state.params)
    ):
        raise ValueError(
            "this TrainState was consumed by an earlier train_step, which donates its state: "
            "use the state that call returned (state, metrics = train_step(state, ...)); to "
            "keep one, copy it first: jax.tree.map(jnp.copy, state)"
        )


def _checked_params(model, params):
    """`params` as float32 device arrays, if they have the shapes `model` draws."""
    expected = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    shapes_of = functools.partial(jax.tree.map, lambda leaf: tuple(jnp.shape(leaf)))
    try:
        same = shapes_of(expected) == shapes_of(params)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(
            "params do not fit the model: pass the `params` collection of a model built "
            "with the same settings (LoadedRun.params of vae_jax.pretrained.load)"
        )
    # A copy: the train step donates its state, and the caller keeps what it passed.
    return jax.tree.map(lambda leaf: jnp.array(leaf, jnp.float32), params)


def train_step(
    state: TrainState,
    images,
    key: jax.Array,
    beta: float | jax.Array = 1.0,
    weights: jax.Array | None = None,
    *,
    objective: Objective = Objective(),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `objective` for a batch: checks the images, then runs
    `jitted_train_step`, which compiles once per model and objective.

    Args:
      state: parameters and optimiser state (donated: do not reuse the one passed in).
      images: [batch, pixels] (or [batch, H, W, C]): uint8 pixels, or floats in [0, 1]
        (the likelihood's pixel range). A NumPy batch has its values checked on the host;
        a jax.Array has its dtype and shape checked, not its values, which would make
        the loop wait on the device every step (docs/api.md).
      key: PRNG key of this step's z draws.
      beta: the KL weight; this step uses beta * objective.beta_schedule(state.step).
      weights: optional [batch] 0/1 mask of the images that count (for a padded batch).

    Returns:
      The new state, and `Objective.batch_loss`'s metrics (nats per image) with `beta`,
      this step's KL weight, and `grad_norm`, the global norm of the gradient before
      any clipping.

    Raises:
      ValueError: images the model cannot take (`vae_jax.inputs`), or a state that an
        earlier step consumed, before any device work.
    """
    check_not_donated(state)
    model = model_of(state.apply_fn)
    if model is not None:
        images = model_images(
            model, images, check_values_on_device=False, likelihood=objective.likelihood(model)
        )
    return jitted_train_step(state, images, key, beta, weights, objective=objective)


@functools.partial(jax.jit, static_argnames=("objective",), donate_argnames=("state",))
def jitted_train_step(
    state: TrainState,
    images: jax.Array,
    key: jax.Array,
    beta: float | jax.Array = 1.0,
    weights: jax.Array | None = None,
    *,
    objective: Objective = Objective(),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` without its host check of the images: the jitted program itself, for
    inputs already checked, inside a jitted loop of your own, or to `.lower()` ahead of time.
    """
    step_beta = beta * objective.beta_schedule(state.step)
    grad_fn = jax.value_and_grad(objective.batch_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, state.apply_fn, images, key, step_beta, weights)
    metrics = {**metrics, "beta": step_beta, "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads=grads), metrics


EPOCH_OPTIONS = ("objective", "batch_size", "binarization", "on_nan", "mesh")


@functools.partial(jax.jit, static_argnames=EPOCH_OPTIONS, donate_argnames=("state",))
def train_epoch(
    state: TrainState,
    train_images: jax.Array,
    epoch_key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    objective: Objective = Objective(),
    batch_size: int = 256,
    binarization: str = "none",
    on_nan: str = "stop",
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One shuffled pass over `train_images` as a single compiled loop.

    Every image is used once per epoch: the last batch is padded and the padding masked
    out, as PyTorch's DataLoader (without drop_last) would do with a short last batch.

    Args:
      train_images: [num_images, pixels] uint8, resident on the device.
      epoch_key: this epoch's key; it fixes the order, the binarization and the z draws.
      beta: the KL weight; step t uses beta * objective.beta_schedule(t).
      objective: what each step minimises.
      binarization: "none" trains on grayscale pixels; "dynamic" draws binary pixels
        afresh at each step.
      on_nan: "stop" trains on regardless and reports the first bad step, for the caller
        to stop; "skip_batch" keeps the previous state whenever a step's loss or new
        parameters are not finite, and counts those batches.
      mesh: a `parallel.data_mesh()` to split each batch over its devices (state and
        `train_images` replicated over it); None runs where the inputs are. The numbers
        are the same either way up to float summation order: every random draw is made
        for the whole batch, whatever the split.

    Returns:
      The new state and the epoch means (nats per image, over the batches kept) of
      `objective`, `loss`, `recon`, `kl` and `grad_norm` (weighted by images);
      `first_nonfinite_step` (-1 if none), `params_finite` (0 or 1), `skipped_batches`,
      and `beta`, the KL weight of the epoch's last step.
    """
    train_images = _checked_train_images(state, train_images)
    step_options = dict(objective=objective, binarization=binarization, on_nan=on_nan, mesh=mesh)
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
    state: TrainState,
    train_images: jax.Array,
    epoch_key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    batch_size: int = 256,
    **options,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_epoch` with one compiled program per step instead of one per epoch.

    The same batches, draws and metrics, for programs that XLA runs slowly inside a loop:
    on the CPU, convolutions inside `lax.scan` run about 13x slower than the same step
    called on its own (measured: 2.3 s against 0.18 s a step for the conv VAE).
    """
    train_images = _checked_train_images(state, train_images)
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


def _checked_train_images(state, train_images):
    """The training set's dtype and shape checked for the state's model (statically: it
    is on the device, where reading its values would cost a wait)."""
    model = model_of(state.apply_fn)
    if model is None:
        return train_images
    return model_images(model, train_images, check_values_on_device=False, name="train_images")


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
    objective: Objective = Objective(),
    binarization: str = "none",
    on_nan: str = "stop",
    mesh: Mesh | None = None,
):
    """Step `step_index` of an epoch: the batch's images, draws and update, and its sums."""
    if mesh is not None:  # Each device gathers and trains on its slice of the batch.
        indices = jax.lax.with_sharding_constraint(indices, parallel.batch_sharded(mesh))
    binarize_key, z_key = jax.random.split(jax.random.fold_in(step_root, step_index))
    images = data.to_unit_interval(train_images[indices])
    if binarization == "dynamic":
        images = data.binarize(binarize_key, images)
    new_state, metrics = jitted_train_step(state, images, z_key, beta, weights, objective=objective)
    step_beta = metrics.pop("beta")
    finite = jnp.isfinite(metrics["objective"])
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
