"""Float32 matmul precision: full for every reported number, a choice for training.

On NVIDIA GPUs since Ampere, JAX's default float32 matmul is TF32 (a 10-bit mantissa),
and on TPUs it is bfloat16 passes; on a CPU it is full float32 whatever the setting. A
likelihood summed over 784 pixels, or a squared distance expanded into matmuls, loses
nats to that rounding. So every bound, NLL and test or validation ELBO that vae_jax
reports is computed under `scoring()`, float32 at HIGHEST precision on every backend,
whatever the device default or `JAX_DEFAULT_MATMUL_PRECISION`. Training runs under
`training(name)`: the device's default unless the run asks for more
(`--matmul_precision`), since the step's noise dwarfs TF32's rounding.

Both are `jax.default_matmul_precision` contexts. They act when a function is traced, so
they sit inside the jitted scoring functions themselves, and around the compilation of
the training epoch.
"""

import contextlib

import jax

# JAX's names for the float32 matmul precision of training (--matmul_precision).
MATMUL_PRECISIONS = ("default", "high", "highest")
SCORING_PRECISION = "highest"


def scoring():
    """The context in which every reported number is computed: HIGHEST precision."""
    return jax.default_matmul_precision(SCORING_PRECISION)


def training(name: str):
    """The context of the training step: `name`, one of `MATMUL_PRECISIONS`.

    "default" leaves JAX's setting as it is (the device's default, or
    $JAX_DEFAULT_MATMUL_PRECISION); "high" and "highest" pin it.
    """
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {name!r}; expected one of {MATMUL_PRECISIONS}")
    if name == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(name)
