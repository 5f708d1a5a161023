"""Data parallelism over every device, on one host or several, with `jax.sharding`.

One `Mesh` with a single "data" axis spans all devices of all processes. Parameters,
optimiser state and the uint8 training set are replicated; each global batch is split
along the data axis, so device d computes the loss and gradients of its slice and XLA
inserts the all-reduce of the gradients. The jitted programs are the same for 1 or N
devices, and for 1 or N processes: only the shardings of their inputs differ.

Multi-host: every process runs the same command. `initialize` connects them (explicit
flags, or JAX's detection of Cloud TPU, SLURM, Open MPI and Kubernetes), and
`is_writer()` is true on process 0 only, which alone writes files.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax.errors import InputError

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-d mesh named "data" over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises InputError unless the global batch splits evenly over the devices."""
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        lower = batch_size // num_devices * num_devices
        suggestion = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
        raise InputError(
            f"--batch_size={batch_size} does not divide evenly over the {num_devices} devices "
            f"({jax.devices()[0].platform}); use a multiple of {num_devices}, e.g. {suggestion}"
        )


def put_replicated(tree, mesh: Mesh):
    """Copies a pytree of host or single-device arrays (PRNG keys included) to every device.

    Each process must pass the same values (in a multi-host run, every process computes
    them from the same seed or reads them from the same files).
    """

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        # make_array_from_callback reads only what this process's devices need, and
        # never compares values across processes (device_put would, for large arrays).
        return jax.make_array_from_callback(host.shape, replicated(mesh), lambda index: host[index])

    return jax.tree.map(put, tree)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1):
    """Joins this process to a multi-process JAX run; call it before any other JAX call.

    Args:
      coordinator_address: "host:port" of process 0; "" lets JAX read
        $JAX_COORDINATOR_ADDRESS or detect a Cloud TPU, SLURM, Open MPI or Kubernetes job.
      num_processes: how many processes; 0 to detect.
      process_id: this process's rank in [0, num_processes); -1 to detect.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=process_id if process_id >= 0 else None,
    )


def is_writer() -> bool:
    """Whether this process writes files: process 0 of a multi-host run, or the only one."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (no-op for a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process (every process must call this)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
