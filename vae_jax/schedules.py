"""Schedules of the KL weight: pure functions of the optimiser step.

The loss at step t is recon + beta * factor(t) * KL, where `beta` is the run's --beta and
factor(t) in [0, 1] is one of:

- constant: 1;
- linear warm-up (KL annealing, Bowman et al. 2016): t / warmup_steps, then 1;
- cyclical (Fu et al. 2019): cycles of `cycle_steps` steps; in each, the factor rises
  linearly from 0 to 1 over the first `ramp_fraction` of the cycle and stays at 1 for
  the rest.

Each is set in steps, or in epochs with `beta_schedule`, never as a fraction of the run:
so a run extended on resume follows the schedule of an uninterrupted run of its final
length.
"""

import dataclasses

import jax
import jax.numpy as jnp

SCHEDULES = ("constant", "linear", "cyclical")


def linear_warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    """min(1, step / warmup_steps); 1 from the start when warmup_steps is 0."""
    if warmup_steps <= 0:
        return jnp.ones_like(step, jnp.float32)
    return jnp.minimum(1.0, step / warmup_steps).astype(jnp.float32)


def cyclical(step: jax.Array, cycle_steps: int, ramp_fraction: float = 0.5) -> jax.Array:
    """Fu et al.'s cyclical factor: position tau in [0, 1) in the cycle, min(1, tau / R)."""
    position = jnp.mod(step, cycle_steps) / cycle_steps
    return jnp.minimum(1.0, position / ramp_fraction).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class BetaSchedule:
    """A KL-weight schedule in optimiser steps: `schedule(step)` is the factor in [0, 1].

    Frozen and hashable, so it can be a static argument of a jitted function.
    """

    kind: str = "constant"
    warmup_steps: int = 0  # linear
    cycle_steps: int = 1  # cyclical
    ramp_fraction: float = 0.5  # cyclical

    def __call__(self, step: jax.Array) -> jax.Array:
        if self.kind == "constant":
            return jnp.ones_like(step, jnp.float32)
        if self.kind == "linear":
            return linear_warmup(step, self.warmup_steps)
        if self.kind == "cyclical":
            return cyclical(step, self.cycle_steps, self.ramp_fraction)
        raise ValueError(f"unknown beta schedule {self.kind!r}; expected one of {SCHEDULES}")


def beta_schedule(
    kind: str,
    steps_per_epoch: int,
    warmup_epochs: float = 10,
    cycle_epochs: float = 5,
    ramp_fraction: float = 0.5,
) -> BetaSchedule:
    """The schedule a run's settings describe, converted from epochs to steps."""
    return BetaSchedule(
        kind=kind,
        warmup_steps=round(warmup_epochs * steps_per_epoch),
        cycle_steps=max(1, round(cycle_epochs * steps_per_epoch)),
        ramp_fraction=ramp_fraction,
    )
