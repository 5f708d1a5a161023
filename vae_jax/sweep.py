"""Train S models at once: `jax.vmap` over parameters, optimiser state, beta and seed.

The S models share the architecture and the training set and differ in their KL weight
and seed. One jitted program runs an epoch of all of them: the per-model matmuls become
batched matmuls, and S runs cost one launch, one compilation and one pass of the loop.
Model s of a sweep is the model a separate run with seed `seeds[s]` and beta `betas[s]`
trains: the same initial parameters, data order and random draws (`run_keys(seed)`).
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from vae_jax.train import create_train_state, run_keys, train_epoch


def create_sweep_state(
    model, seeds: list[int], tx: optax.GradientTransformation
) -> tuple[train_state.TrainState, jax.Array]:
    """The S initial states stacked on a leading axis, and the S runs' training keys [S].

    Every model has the optimiser `tx` (e.g. `optax.adam(1e-3)`).
    """
    keys = [run_keys(seed) for seed in seeds]
    init_keys = jnp.stack([k.init for k in keys])
    train_keys = jnp.stack([k.train for k in keys])
    states = jax.vmap(lambda key: create_train_state(model, key, tx))(init_keys)
    return states, train_keys


@functools.partial(jax.jit, static_argnames=("options",), donate_argnames=("states",))
def _sweep_epoch(states, train_images, epoch_keys, betas, options):
    epoch = functools.partial(train_epoch, **dict(options))
    return jax.vmap(epoch, in_axes=(0, None, 0, 0))(states, train_images, epoch_keys, betas)


def train_sweep_epoch(
    states: train_state.TrainState,
    train_images: jax.Array,
    train_keys: jax.Array,
    epoch: int,
    betas: jax.Array,
    **options,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """Epoch `epoch` (1-based) of every model of the sweep, as one compiled program.

    Args:
      states: S stacked states from `create_sweep_state` (donated).
      train_images: [num_images, pixels] uint8, shared by the S models.
      train_keys: [S] the runs' training keys; epoch e uses fold_in(key, e), as a run does.
      betas: [S] KL weights.
      **options: `train_epoch`'s keyword options (objective, batch_size, binarization, ...).

    Returns:
      The new states and `train_epoch`'s metrics, each with a leading axis of S.
    """
    epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_keys, epoch)
    betas = jnp.asarray(betas, jnp.float32)
    return _sweep_epoch(states, train_images, epoch_keys, betas, tuple(sorted(options.items())))
