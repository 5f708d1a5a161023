"""Optimisers and learning-rate schedules, built from optax for the common cases.

`create_train_state` takes any optax `GradientTransformation`; these build the ones the
command line names: Adam or AdamW, optionally after clipping the gradient's global norm,
with a constant, cosine or Burda et al. learning rate. Schedules are in optimiser steps.
"""

import optax

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "burda")
BURDA_STAGES = 8  # Burda et al. (2016): stages i = 0 .. 7, 3^i epochs each.


def burda_schedule(learning_rate: float, steps_per_epoch: int) -> optax.Schedule:
    """Burda et al.'s schedule: stage i lasts 3^i epochs at learning_rate * 10^(-i/7).

    Stages i = 0 .. 7 cover 3,280 epochs; the rate then stays at its last value
    (learning_rate / 10). With learning_rate 1e-3 this is the paper's schedule.
    """
    # Stage i starts after 3^0 + ... + 3^(i-1) = (3^i - 1) / 2 epochs.
    boundaries = {
        steps_per_epoch * (3**stage - 1) // 2: 10 ** (-1 / 7) for stage in range(1, BURDA_STAGES)
    }
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def learning_rate_schedule(
    kind: str, learning_rate: float, steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
    """The learning rate at each optimiser step.

    constant: `learning_rate`; cosine: from `learning_rate` down to 0 over `num_epochs`
    epochs (Loshchilov & Hutter 2017, without restarts); burda: `burda_schedule`.
    """
    if kind == "constant":
        return optax.constant_schedule(learning_rate)
    if kind == "cosine":
        return optax.cosine_decay_schedule(learning_rate, num_epochs * steps_per_epoch)
    if kind == "burda":
        return burda_schedule(learning_rate, steps_per_epoch)
    raise ValueError(f"unknown learning-rate schedule {kind!r}; expected one of {LR_SCHEDULES}")


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    grad_clip: float = 0.0,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """Adam or AdamW (decoupled `weight_decay`), after clipping the global gradient norm
    to `grad_clip` when it is > 0."""
    if name == "adam":
        optimizer = optax.adam(learning_rate)
    elif name == "adamw":
        optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), optimizer)
    return optimizer
