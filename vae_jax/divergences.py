"""The estimators behind the disentangling and MMD objectives, and their diagnostics.

- `kl_decomposition`: the KL of a diagonal Gaussian posterior split into index-code mutual
  information, total correlation and dimension-wise KL (Chen et al. 2018, "Isolating
  Sources of Disentanglement in VAEs"), with their minibatch-weighted (`mws`) and
  minibatch-stratified (`mss`) estimators of log q(z) and log prod_d q(z_d). The three
  parts add up to log q(z|x) - log p(z), draw for draw, whichever the estimator.
- `mmd_squared`: the unbiased estimator of the squared maximum mean discrepancy between
  two samples (Gretton et al. 2012), with the inverse multiquadratic and RBF kernels of
  WAE (Tolstikhin et al. 2018) and InfoVAE (Zhao et al. 2019).

Every function is pure and takes `weights` (1 for the rows that count, 0 for a padded
batch's) so that a padded last batch gives the numbers of its real rows.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae_jax.losses import _HALF_LOG_2PI

TC_ESTIMATORS = ("mws", "mss")
MMD_KERNELS = ("imq", "rbf")


class KlParts(NamedTuple):
    """The KL of each draw split in three, each [batch], in nats; they sum to
    log q(z|x) - log p(z) of the draw."""

    mutual_information: jax.Array  # log q(z|x) - log q(z)
    total_correlation: jax.Array  # log q(z) - sum_d log q(z_d)
    dimensionwise_kl: jax.Array  # sum_d log q(z_d) - log p(z)


def log_gaussian_pairs(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z_i,d | mean_j,d, exp(logvar_j,d)) of every pair: z [n, D], mean and logvar
    [m, D] -> [n, m, D], per dimension."""
    z, mean, logvar = z[:, None, :], mean[None], logvar[None]
    return -0.5 * (jnp.square(z - mean) * jnp.exp(-logvar) + logvar + 2.0 * _HALF_LOG_2PI)


def stratified_log_weights(weights: jax.Array, dataset_size: int) -> jax.Array:
    """log r(j | i) of minibatch stratified sampling (Chen et al. 2018, Appendix C): [M, M].

    With n images that count (the others' weight -inf), for the draw of image i: weight
    1/N on its own image, (N - n + 1) / (N (n - 1)) on the next one (cyclically) and
    1 / (n - 1) on each other, so each row sums to 1. This is the matrix of the authors'
    code, `_log_importance_weight_matrix`, with its last row's wrap-around entry where
    that code writes it one row early (its rows n - 1 and n then do not sum to 1).
    """
    size = weights.shape[0]
    count = jnp.sum(weights)
    others = jnp.maximum(count - 1.0, 1.0)
    rows, columns = jnp.arange(size)[:, None], jnp.arange(size)[None, :]
    after = jnp.mod(rows + 1, jnp.maximum(count, 1.0).astype(rows.dtype))
    stratified = (dataset_size - others) / (dataset_size * others)
    matrix = jnp.where(columns == after, stratified, 1.0 / others)
    matrix = jnp.where(columns == rows, 1.0 / dataset_size, matrix)
    log_matrix = jnp.log(matrix)
    return jnp.where(weights[None, :] > 0, log_matrix, -jnp.inf)


def kl_decomposition(
    z: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    log_prior: jax.Array,
    dataset_size: int,
    estimator: str = "mws",
    weights: jax.Array | None = None,
) -> KlParts:
    """The decomposition of Chen et al. (2018) for one draw z_i ~ q(z|x_i) per image.

    q(z) = 1/N sum_n q(z|x_n) is the aggregate posterior over the N = `dataset_size`
    training images, estimated from the M images of the batch: `mws` weighs each
    q(z_i|x_j) by 1/(N M), `mss` by the stratified weights (`stratified_log_weights`),
    which sum to 1 over j; prod_d q(z_d) likewise, dimension by dimension. So where every
    image has the same posterior, `mss` gives 0 for all three parts, and `mws` log N,
    (D - 1) log N and -D log N: its known bias. `aggregate_information` gives the exact
    values of a set of images (what `evaluate` reports).

    Args:
      z: [M, D] one draw per image; mean, logvar: [M, D], each image's diagonal Gaussian.
      log_prior: [M], log p(z_i).
      weights: [M], 1 for the images that count; None: all.
    """
    if estimator not in TC_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {TC_ESTIMATORS}")
    weights = jnp.ones(z.shape[:1], jnp.float32) if weights is None else weights
    pairs = log_gaussian_pairs(z, mean, logvar)  # [M, M, D]
    log_q_given_x = jnp.sum(jnp.diagonal(pairs, axis1=0, axis2=1).T, axis=-1)  # [M]
    if estimator == "mws":
        count = jnp.maximum(jnp.sum(weights), 1.0)
        log_pair_weights = jnp.where(weights > 0, -jnp.log(count * dataset_size), -jnp.inf)
        log_pair_weights = jnp.broadcast_to(log_pair_weights[None, :], pairs.shape[:2])
    else:
        log_pair_weights = stratified_log_weights(weights, dataset_size)
    log_q = jax.nn.logsumexp(log_pair_weights + jnp.sum(pairs, axis=-1), axis=1)
    log_marginals = jnp.sum(jax.nn.logsumexp(log_pair_weights[..., None] + pairs, axis=1), -1)
    return KlParts(
        mutual_information=log_q_given_x - log_q,
        total_correlation=log_q - log_marginals,
        dimensionwise_kl=log_marginals - log_prior,
    )


@functools.partial(jax.jit, static_argnames=("chunk",))
def aggregate_information(
    z: jax.Array, mean: jax.Array, logvar: jax.Array, chunk: int = 128
) -> tuple[jax.Array, jax.Array]:
    """(mutual information, total correlation) of a set of n images, in nats: the means
    over the set of log q(z_i|x_i) - log q(z_i) and log q(z_i) - sum_d log q(z_i,d), with
    q(z) = 1/n sum_j q(z|x_j) the set's exact aggregate posterior (no estimator's
    weights) and one draw z_i per image.

    z, mean, logvar: [n, D]. The n^2 D pairs are computed `chunk` rows at a time, so
    memory is [chunk, n, D]: all 10,000 test images take seconds.
    """
    num_images = z.shape[0]
    padding = -num_images % chunk
    rows = jnp.pad(z, ((0, padding), (0, 0))).reshape(-1, chunk, z.shape[-1])
    log_n = jnp.log(num_images)

    def log_aggregates(z_rows):  # log q(z_i) and sum_d log q(z_i,d) of each row
        pairs = log_gaussian_pairs(z_rows, mean, logvar)  # [chunk, n, D]
        log_q = jax.nn.logsumexp(jnp.sum(pairs, axis=-1), axis=1) - log_n
        return log_q, jnp.sum(jax.nn.logsumexp(pairs, axis=1) - log_n, axis=-1)

    log_q, log_marginals = (x.reshape(-1)[:num_images] for x in jax.lax.map(log_aggregates, rows))
    log_q_given_x = jnp.sum(-0.5 * (jnp.square(z - mean) * jnp.exp(-logvar) + logvar), -1) - (
        z.shape[-1] * _HALF_LOG_2PI
    )
    return jnp.mean(log_q_given_x - log_q), jnp.mean(log_q - log_marginals)


def imq_kernel(c: float):
    """k(a, b) = C / (C + |a - b|^2), the inverse multiquadratic kernel of WAE, C = `c`."""

    def kernel(squared_distance):
        return c / (c + squared_distance)

    return kernel


def rbf_kernel(c: float):
    """k(a, b) = exp(-|a - b|^2 / C), the Gaussian (RBF) kernel, C = `c`."""

    def kernel(squared_distance):
        return jnp.exp(-squared_distance / c)

    return kernel


def kernel_scale(latent: int, bandwidth: float) -> float:
    """C = 2 D sigma^2, the kernels' scale for codes of D dimensions whose prior has
    standard deviation sigma (Tolstikhin et al. 2018, and Pythae's WAE and InfoVAE)."""
    return 2.0 * latent * bandwidth**2


def mmd_squared(
    x: jax.Array,
    y: jax.Array,
    kernel: str = "imq",
    bandwidth: float = 1.0,
    weights: jax.Array | None = None,
) -> jax.Array:
    """The unbiased estimate of MMD^2(P, Q) from x [n, D] ~ P and y [n, D] ~ Q: a scalar.

        1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
          - 2/n^2 sum_{i, j} k(x_i, y_j),
    whose expectation is MMD^2 (0 when P = Q). `kernel`: imq or rbf, of scale
    `kernel_scale(D, bandwidth)`. `weights` [n]: the pairs (x_i, y_i) that count.
    """
    if kernel not in MMD_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {MMD_KERNELS}")
    k = (imq_kernel if kernel == "imq" else rbf_kernel)(kernel_scale(x.shape[-1], bandwidth))
    weights = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights
    pair_weights = weights[:, None] * weights[None, :]
    off_diagonal = pair_weights * (1.0 - jnp.eye(x.shape[0]))
    count = jnp.sum(weights)

    def squared_distances(a, b):
        return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)

    within = jnp.sum(off_diagonal * (k(squared_distances(x, x)) + k(squared_distances(y, y))))
    across = jnp.sum(pair_weights * k(squared_distances(x, y)))
    return within / (count * (count - 1.0)) - 2.0 * across / jnp.square(count)
