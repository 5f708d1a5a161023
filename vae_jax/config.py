"""Every setting of a run, in one frozen dataclass.

`vae_jax.main` defines one command-line flag per field (its help is the field's
`help` metadata), so a setting is declared once, here. Library functions take a
`Config` or plain arguments and never read flags. A Config builds what it describes
(`build_model`, `build_objective`, `build_optimizer`), and `check_compatible` says which
settings a resumed run may change.

The fields are grouped by concern (`GROUPS`: model, objective, optimisation, data,
devices, outputs), in that order; `--helpfull` lists the flags by group, and `validate`
checks each group in a function of its own. The dataclass itself stays flat, one flag
per field: config.json and `check_compatible` rely on the flat names.
"""

import dataclasses
import json
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import likelihoods, optim
from vae_jax.convolutional import conv_hierarchical_vae
from vae_jax.divergences import MMD_KERNELS, TC_ESTIMATORS
from vae_jax.errors import InputError
from vae_jax.flows import IAF
from vae_jax.losses import DEFAULT_SCALE, RECONSTRUCTIONS
from vae_jax.models import (
    VAE,
    ConvDecoder,
    ConvEncoder,
    GatedDense,
    HierarchicalVAE,
    ReluDense,
    conv_image_side,
)
from vae_jax.objective import (
    BOUNDS,
    GRADIENT_ESTIMATORS,
    GROUPED,
    IMPORTANCE_WEIGHTED,
    MMD_BOUNDS,
    Objective,
)
from vae_jax.precision import MATMUL_PRECISIONS
from vae_jax.priors import MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior
from vae_jax.schedules import SCHEDULES, beta_schedule

ARCHITECTURES = ("mlp", "conv")
POSTERIORS = ("gaussian", "iaf")
PRIORS = ("standard", "vamp", "mog")
HIDDEN_LAYERS = {"relu": ReluDense, "gated": GatedDense}
BINARIZATIONS = ("none", "dynamic")
NAN_POLICIES = ("stop", "skip_batch")
DTYPES = ("float32", "bfloat16")
EPOCH_LOOPS = ("auto", "scan", "steps")


# Settings that may differ when a run resumes; any other difference changes the model,
# the data or their order, and is refused.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",  # but see check_compatible: not with --lr_schedule=cosine
        "learning_rate",
        "beta",
        "workdir",
        "overwrite",
        "data_dir",
        "download",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
        "tensorboard_images_every",
        "on_nan",
        "early_stop_patience",  # when the run ends, not what an epoch computes
        # How it runs: the process layout and the matmul precision (parameters are
        # float32 whatever --dtype) may change between the parts of a run.
        "dtype",
        "matmul_precision",
        "epoch_loop",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
    }
)


GROUPS = ("model", "objective", "optimisation", "data", "devices", "outputs")


def _field(group: str, default, help: str, **metadata):
    """A Config field of `group` (one of GROUPS): its default, and its flag's help."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **metadata})


@dataclasses.dataclass(frozen=True)
class Config:
    """A run's settings; `validate()` checks them before any work starts."""

    def __post_init__(self):
        if isinstance(self.latent, int):  # Config(latent=64), and config.json before 2026-12
            object.__setattr__(self, "latent", (self.latent,))

    # Model.
    latent: tuple[int, ...] = _field(
        "model",
        (64,),
        "Size of each stochastic layer, from the data up: 64 is one layer (the reference); "
        "40,40 a two-layer hierarchy (the VampPrior paper's HVAE; with --architecture=conv "
        "its ConvHVAE).",
    )
    prior: str = _field(
        "model",
        "standard",
        "p(z) of the top layer: standard (N(0, I)); vamp (the VampPrior of Tomczak & "
        "Welling 2018, a mixture of the posteriors of --num_pseudo_inputs learned "
        "pseudo-inputs); mog (a learned mixture of --num_components Gaussians).",
        choices=PRIORS,
    )
    num_pseudo_inputs: int = _field("model", 500, "Pseudo-inputs of --prior=vamp.")
    num_components: int = _field("model", 10, "Components of --prior=mog.")
    activation: str = _field(
        "model",
        "relu",
        "Hidden layers of the mlp: relu, or gated (h = (W x + b) * sigmoid(V x + c), as in "
        "the VampPrior paper).",
        choices=tuple(HIDDEN_LAYERS),
    )
    hidden_sizes: tuple[int, ...] = _field(
        "model", (512, 256), "Encoder widths, comma-separated; the decoder mirrors them (mlp)."
    )
    architecture: str = _field(
        "model",
        "mlp",
        "mlp (the reference network) or conv (strided convs; 28x28 one-channel images; with "
        "--latent=a,b the VampPrior paper's gated ConvHVAE).",
        choices=ARCHITECTURES,
    )
    conv_channels: tuple[int, ...] = _field(
        "model",
        (32, 64),
        "Channels of the conv architecture's layers, comma-separated. With two stochastic "
        "layers (the ConvHVAE), one pair of gated convs per entry in each encoder, and the "
        "decoder's convs have the last; --hidden_sizes' first width is its dense layers'.",
    )
    reconstruction: str = _field(
        "model",
        "bernoulli",
        "Likelihood p(x|z): bernoulli (BCE); continuous_bernoulli (a true density of "
        "grayscale pixels, Loaiza-Ganem & Cunningham 2019); gaussian; laplace.",
        choices=RECONSTRUCTIONS,
    )
    recon_scale: float = _field(
        "model",
        DEFAULT_SCALE,
        "Fixed std (gaussian) or scale (laplace) of p(x|z), in pixel units.",
    )
    posterior: str = _field(
        "model",
        "gaussian",
        "q(z|x): gaussian (the encoder's diagonal Gaussian), or iaf (that Gaussian through "
        "--num_flows steps of inverse autoregressive flow, Kingma et al. 2016; one layer).",
        choices=POSTERIORS,
    )
    num_flows: int = _field("model", 2, "IAF steps of --posterior=iaf.")
    flow_hidden: int = _field("model", 320, "Width of each IAF step's MADE, --posterior=iaf.")
    # Objective: recon + beta * KL, or the importance-weighted bound.
    objective: str = _field(
        "objective",
        "elbo",
        "elbo (one z per image); iwae (the k-sample bound of Burda et al. 2016); miwae, "
        "ciwae, piwae (Rainforth et al. 2018); btcvae (Chen et al. 2018); infovae (MMD-VAE, "
        "Zhao et al. 2019); wae (WAE-MMD, Tolstikhin et al. 2018). docs/objectives.md.",
        choices=BOUNDS,
    )
    num_samples: int = _field(
        "objective",
        1,
        "k, the z draws per image of --objective=iwae or ciwae (per group: miwae, piwae).",
    )
    num_groups: int = _field(
        "objective", 1, "M, the groups of --num_samples draws of --objective=miwae or piwae."
    )
    ciwae_beta: float = _field(
        "objective", 0.5, "The ELBO's share of --objective=ciwae, in [0, 1] (1: ELBO, 0: IWAE)."
    )
    tc_weight: float = _field(
        "objective", 6.0, "Weight of the total correlation in --objective=btcvae (its beta)."
    )
    tc_estimator: str = _field(
        "objective",
        "mws",
        "Estimator of --objective=btcvae's log q(z): mws (minibatch-weighted) or mss "
        "(minibatch-stratified sampling), Chen et al. 2018.",
        choices=TC_ESTIMATORS,
    )
    mmd_weight: float = _field(
        "objective", 100.0, "Weight of MMD^2(q(z), p(z)) in --objective=infovae or wae."
    )
    mmd_kernel: str = _field(
        "objective",
        "imq",
        "Kernel of the MMD: imq (inverse multiquadratic, as WAE) or rbf (Gaussian).",
        choices=MMD_KERNELS,
    )
    mmd_bandwidth: float = _field(
        "objective", 1.0, "The prior's std that sets the MMD kernel's scale, 2 D sigma^2."
    )
    gradient_estimator: str = _field(
        "objective",
        "standard",
        "standard, or dreg (with --objective=iwae): the encoder's doubly-reparameterized "
        "gradient (Tucker et al. 2019), whose signal does not fade as k grows.",
        choices=GRADIENT_ESTIMATORS,
    )
    beta: float = _field("objective", 1.0, "Weight of the KL term; 1 gives the ELBO.")
    beta_schedule: str = _field(
        "objective",
        "constant",
        "constant; linear (KL warm-up from 0 over --warmup_epochs); cyclical (Fu et al. "
        "2019: cycles of --cycle_epochs, each rising over --cycle_ramp of it, then flat).",
        choices=SCHEDULES,
    )
    warmup_epochs: float = _field("objective", 10.0, "Epochs of the linear warm-up of beta.")
    cycle_epochs: float = _field(
        "objective", 5.0, "Epochs per cycle of the cyclical beta schedule."
    )
    cycle_ramp: float = _field("objective", 0.5, "Fraction of each cycle over which beta rises.")
    free_bits: float = _field(
        "objective",
        0.0,
        "Free bits: floor in nats on each latent dimension's batch-mean KL (0: off).",
    )
    # Optimisation.
    epochs: int = _field("optimisation", 20, "Passes over the training set.")
    batch_size: int = _field("optimisation", 256, "Images per optimiser step.")
    optimizer: str = _field(
        "optimisation",
        "adam",
        "adam, or adamw (decoupled --weight_decay).",
        choices=optim.OPTIMIZERS,
    )
    learning_rate: float = _field(
        "optimisation", 1e-3, "Learning rate (the start of --lr_schedule)."
    )
    lr_schedule: str = _field(
        "optimisation",
        "constant",
        "constant; cosine (to 0 over --epochs); burda (Burda et al. 2016: 3^i epochs at "
        "--learning_rate * 10^(-i/7), i = 0..7).",
        choices=optim.LR_SCHEDULES,
    )
    weight_decay: float = _field(
        "optimisation", 1e-4, "Decoupled weight decay of --optimizer=adamw."
    )
    grad_clip: float = _field(
        "optimisation", 0.0, "Clip the gradient's global norm to this before the update; 0 is off."
    )
    ema_decay: float = _field(
        "optimisation",
        0.0,
        "Keep an exponential moving average of the parameters with this decay (e.g. "
        "0.999); the validation ELBO, the saved parameters, pictures and evaluation use "
        "it. 0 is off.",
    )
    seed: int = _field("optimisation", 0, "Seed of every random draw: same flags, same numbers.")
    init_from: str = _field(
        "optimisation",
        "",
        "Start from trained parameters instead of drawn ones, to fine-tune: a shipped "
        "model's name (mnist_reference, mnist_binarized, mnist_vamp_hierarchy: "
        "docs/pretrained.md) or a finished run's --workdir. The model flags must be that "
        "model's; the optimiser starts afresh. Empty: parameters drawn from --seed.",
    )
    early_stop_patience: int = _field(
        "optimisation",
        0,
        "With --num_valid: end the run when the validation ELBO has not improved for N "
        "epochs, counted after the KL warm-up of --beta_schedule=linear (the VampPrior "
        "paper's look-ahead is 50); 0 is off.",
    )
    # Data.
    dataset: str = _field("data", "mnist", "TFDS dataset name, e.g. mnist or fashion_mnist.")
    data_dir: str | None = _field(
        "data",
        None,
        "A TFDS data dir, or a folder of the four MNIST-format IDX files (an empty or new "
        "folder is downloaded into). Default: TFDS's own ($TFDS_DATA_DIR, else "
        "~/tensorflow_datasets), else the download cache ($XDG_CACHE_HOME/vae_jax, else "
        "~/.cache/vae_jax).",
    )
    download: bool = _field(
        "data",
        True,
        "Download mnist or fashion_mnist (SHA-256 verified) when no copy is found; "
        "--nodownload never touches the network. $VAE_JAX_MIRROR=URL replaces the mirrors.",
    )
    binarization: str = _field(
        "data",
        "none",
        "none keeps grayscale pixels (the reference protocol); dynamic draws binary "
        "pixels afresh each epoch (the likelihood-benchmark protocol).",
        choices=BINARIZATIONS,
    )
    num_train: int = _field("data", 0, "Train on the first N training images only; 0 uses all.")
    num_valid: int = _field(
        "data",
        0,
        "Hold out the last N training images: their ELBO is logged each epoch and the "
        "parameters of the best epoch are kept (best_params.msgpack); 0 is off.",
    )
    # Devices: data parallel over all of them (see vae_jax/parallel.py).
    dtype: str = _field(
        "devices",
        "float32",
        "Matrix-multiply dtype. bfloat16 speeds up GPUs and TPUs; parameters, optimiser "
        "state and losses stay float32.",
        choices=DTYPES,
    )
    matmul_precision: str = _field(
        "devices",
        "default",
        "float32 matmul precision of training, in JAX's names: default (the device's: TF32 "
        "on NVIDIA GPUs since Ampere, bfloat16 passes on TPUs, full float32 on a CPU), high, "
        "or highest (full float32, about 1.4x slower at batch 256 on an H200). Every "
        "reported bound and ELBO is scored at highest whatever this says.",
        choices=MATMUL_PRECISIONS,
    )
    epoch_loop: str = _field(
        "devices",
        "auto",
        "scan: each epoch is one compiled program (lax.scan over the batches); steps: one "
        "compiled program per step; auto: steps for the conv architecture on a CPU, where "
        "XLA runs convolutions inside a loop slowly, else scan.",
        choices=EPOCH_LOOPS,
    )
    distributed: bool = _field(
        "devices",
        False,
        "Join a multi-process run (several hosts) with jax.distributed.initialize; the "
        "three flags below, or JAX's detection of TPU pods, SLURM, Open MPI and "
        "Kubernetes, say where the other processes are.",
    )
    coordinator_address: str = _field(
        "devices", "", "host:port of process 0 (or $JAX_COORDINATOR_ADDRESS), with --distributed."
    )
    num_processes: int = _field(
        "devices", 0, "Number of processes, with --distributed; 0 to detect."
    )
    process_id: int = _field(
        "devices", -1, "This process's rank, with --distributed; -1 to detect."
    )
    # Outputs and resilience.
    workdir: str = _field(
        "outputs",
        "runs/default",
        "Folder for metrics, pictures, params, config and checkpoints; a run started on a "
        "folder holding a checkpoint resumes from it.",
    )
    overwrite: bool = _field(
        "outputs", False, "Start afresh, replacing an earlier run in --workdir."
    )
    tensorboard: bool = _field(
        "outputs",
        True,
        "Write each epoch's metrics, and the sample and reconstruction grids, as "
        "TensorBoard event files in <workdir>/tensorboard (tensorboard --logdir runs).",
    )
    tensorboard_images_every: int = _field(
        "outputs", 5, "Send the sample and reconstruction grids to TensorBoard every N epochs."
    )
    checkpoint_every: int = _field(
        "outputs", 1, "Write a checkpoint every N epochs (and at the end)."
    )
    keep_checkpoints: int = _field("outputs", 3, "Keep the newest N checkpoints.")
    on_nan: str = _field(
        "outputs",
        "stop",
        "On a non-finite loss or parameter: stop (keep the last good checkpoint) or "
        "skip_batch (drop that batch's update and count it).",
        choices=NAN_POLICIES,
    )

    def validate(self) -> "Config":
        """Raises InputError naming the first invalid setting; returns self."""
        checks = [
            *self._model_checks(),
            *self._objective_checks(),
            *self._optimisation_checks(),
            *self._data_checks(),
            *self._device_and_output_checks(),
            *self._choice_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        return self

    def _model_checks(self) -> list[tuple[bool, str]]:
        return [
            (
                len(self.latent) >= 1 and all(size >= 1 for size in self.latent),
                f"--latent must be one or more sizes of at least 1, got "
                f"{','.join(map(str, self.latent))}",
            ),
            (
                len(self.latent) <= 2 or self.architecture == "mlp",
                "--architecture=conv has one or two stochastic layers (--latent=a or a,b)",
            ),
            (
                self.num_pseudo_inputs >= 1,
                f"--num_pseudo_inputs must be at least 1, got {self.num_pseudo_inputs}",
            ),
            (
                self.num_components >= 1,
                f"--num_components must be at least 1, got {self.num_components}",
            ),
            (
                len(self.hidden_sizes) >= 1 and all(w >= 1 for w in self.hidden_sizes),
                f"--hidden_sizes must be one or more positive widths, got {self.hidden_sizes}",
            ),
            (
                len(self.conv_channels) >= 1 and all(c >= 1 for c in self.conv_channels),
                f"--conv_channels must be one or more positive counts, got {self.conv_channels}",
            ),
            (self.recon_scale > 0, f"--recon_scale must be > 0, got {self.recon_scale}"),
            (self.num_flows >= 1, f"--num_flows must be at least 1, got {self.num_flows}"),
            (self.flow_hidden >= 1, f"--flow_hidden must be at least 1, got {self.flow_hidden}"),
            (
                self.posterior == "gaussian" or len(self.latent) == 1,
                "--posterior=iaf flows one stochastic layer: use one --latent size",
            ),
            *(
                (
                    getattr(self, name) == getattr(Config(), name) or self.posterior == "iaf",
                    f"--{name}={getattr(self, name)} is for --posterior=iaf; add that flag",
                )
                for name in ("num_flows", "flow_hidden")
            ),
        ]

    def _objective_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.beta >= 0, f"--beta must be >= 0, got {self.beta}"),
            (self.num_samples >= 1, f"--num_samples must be >= 1, got {self.num_samples}"),
            (
                self.objective in IMPORTANCE_WEIGHTED or self.num_samples == 1,
                f"--num_samples={self.num_samples} is for --objective="
                f"{'|'.join(IMPORTANCE_WEIGHTED)}; add that flag",
            ),
            *self._variant_checks(),
            (
                self.gradient_estimator == "standard" or self.objective == "iwae",
                f"--gradient_estimator={self.gradient_estimator} is for --objective=iwae; "
                "add that flag",
            ),
            (self.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.cycle_epochs > 0, f"--cycle_epochs must be > 0, got {self.cycle_epochs}"),
            (0 < self.cycle_ramp <= 1, f"--cycle_ramp must be in (0, 1], got {self.cycle_ramp}"),
            (self.free_bits >= 0, f"--free_bits must be >= 0, got {self.free_bits}"),
            (
                self.free_bits == 0 or self.objective == "elbo",
                "--free_bits works with --objective=elbo only",
            ),
            (
                self.free_bits == 0
                or (
                    self.prior == "standard"
                    and len(self.latent) == 1
                    and self.posterior == "gaussian"
                ),
                "--free_bits needs the closed-form KL: one layer, --prior=standard and "
                "--posterior=gaussian",
            ),
            (
                self.gradient_estimator == "standard" or self.posterior == "gaussian",
                "--gradient_estimator=dreg scores given draws under q, which an IAF does only "
                "by inverting the flow: use --posterior=gaussian or the standard estimator",
            ),
        ]

    def _variant_checks(self) -> list[tuple[bool, str]]:
        """The flags of the objectives beyond the ELBO and IWAE: in range, and given only
        with the objective they are for."""
        defaults, objective = Config(), self.objective

        def only_with(name: str, objectives: tuple[str, ...]) -> tuple[bool, str]:
            value = getattr(self, name)
            return (
                value == getattr(defaults, name) or objective in objectives,
                f"--{name}={value} is for --objective={'|'.join(objectives)}; add that flag",
            )

        return [
            (self.num_groups >= 1, f"--num_groups must be >= 1, got {self.num_groups}"),
            only_with("num_groups", GROUPED),
            (0 <= self.ciwae_beta <= 1, f"--ciwae_beta must be in [0, 1], got {self.ciwae_beta}"),
            only_with("ciwae_beta", ("ciwae",)),
            (self.tc_weight >= 0, f"--tc_weight must be >= 0, got {self.tc_weight}"),
            only_with("tc_weight", ("btcvae",)),
            only_with("tc_estimator", ("btcvae",)),
            (
                objective != "btcvae" or (len(self.latent) == 1 and self.posterior == "gaussian"),
                "--objective=btcvae splits the KL of one diagonal Gaussian layer: use one "
                "--latent size and --posterior=gaussian",
            ),
            (
                objective != "btcvae" or self.batch_size >= 2,
                "--objective=btcvae estimates q(z) from the other images of a batch: "
                "--batch_size must be at least 2",
            ),
            (self.mmd_weight >= 0, f"--mmd_weight must be >= 0, got {self.mmd_weight}"),
            (self.mmd_bandwidth > 0, f"--mmd_bandwidth must be > 0, got {self.mmd_bandwidth}"),
            *(
                only_with(name, MMD_BOUNDS)
                for name in ("mmd_weight", "mmd_kernel", "mmd_bandwidth")
            ),
        ]

    def _optimisation_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch_size must be at least 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}"),
            (
                self.weight_decay == Config.weight_decay or self.optimizer == "adamw",
                f"--weight_decay={self.weight_decay} is for --optimizer=adamw; add that flag",
            ),
            (self.grad_clip >= 0, f"--grad_clip must be >= 0 (0 is off), got {self.grad_clip}"),
            (
                0 <= self.ema_decay < 1,
                f"--ema_decay must be in [0, 1) (0 is off), got {self.ema_decay}",
            ),
            (
                self.early_stop_patience >= 0,
                f"--early_stop_patience must be >= 0 (0 is off), got {self.early_stop_patience}",
            ),
            (
                self.early_stop_patience == 0 or self.num_valid > 0,
                "--early_stop_patience watches the validation ELBO: add --num_valid=N",
            ),
        ]

    def _data_checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.dataset), "--dataset must name a TFDS dataset, e.g. mnist"),
            (self.num_train >= 0, f"--num_train must be >= 0 (0 = all), got {self.num_train}"),
            (self.num_valid >= 0, f"--num_valid must be >= 0 (0 = off), got {self.num_valid}"),
            (
                self.num_train == 0 or self.batch_size <= self.num_train,
                f"--batch_size={self.batch_size} is larger than --num_train={self.num_train}; "
                "lower --batch_size or raise --num_train",
            ),
        ]

    def _device_and_output_checks(self) -> list[tuple[bool, str]]:
        return [
            (
                self.num_processes >= 0 and self.process_id >= -1,
                "--num_processes must be >= 0 and --process_id >= -1 (0 and -1 detect them)",
            ),
            (
                self.process_id < max(self.num_processes, 1) or not self.num_processes,
                f"--process_id={self.process_id} must be below "
                f"--num_processes={self.num_processes}",
            ),
            (bool(self.workdir), "--workdir must name a folder"),
            (
                self.checkpoint_every >= 1,
                f"--checkpoint_every must be >= 1, got {self.checkpoint_every}",
            ),
            (
                self.tensorboard_images_every >= 1,
                f"--tensorboard_images_every must be >= 1, got {self.tensorboard_images_every}",
            ),
            (
                self.keep_checkpoints >= 1,
                f"--keep_checkpoints must be >= 1, got {self.keep_checkpoints}",
            ),
        ]

    def _choice_checks(self) -> list[tuple[bool, str]]:
        checks = []
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if choices and value not in choices:
                checks.append((False, f"--{field.name}={value} is not one of {', '.join(choices)}"))
        return checks

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def build_model(self, image_shape: tuple[int, ...]) -> VAE | HierarchicalVAE:
        """The model these settings describe, for images of `image_shape`."""
        image_size = int(np.prod(image_shape))
        if self.architecture == "conv":
            try:
                conv_image_side(image_size, len(self.conv_channels))
            except ValueError:
                num_layers = len(self.conv_channels)
                raise InputError(
                    f"--architecture=conv with {num_layers} --conv_channels needs square "
                    f"one-channel images whose side divides by {2**num_layers}, got "
                    f"{tuple(image_shape)}; use --architecture=mlp or fewer --conv_channels"
                ) from None
        top = self.latent[-1]
        prior = {
            "standard": lambda: StandardNormalPrior(top),
            "vamp": lambda: VampPrior(self.num_pseudo_inputs, image_size),
            "mog": lambda: MixtureOfGaussiansPrior(top, self.num_components),
        }[self.prior]()
        dtype, hidden_layer = jnp.dtype(self.dtype), HIDDEN_LAYERS[self.activation]
        likelihood = likelihoods.named(self.reconstruction, self.recon_scale)
        if len(self.latent) > 1 and self.architecture == "conv":
            return conv_hierarchical_vae(
                self.latent,
                image_size=image_size,
                channels=self.conv_channels,
                hidden=self.hidden_sizes[0],
                dtype=dtype,
                prior=prior,
                likelihood=likelihood,
            )
        mlp = (self.hidden_sizes, image_size, dtype, hidden_layer)
        if len(self.latent) > 1:
            return HierarchicalVAE(self.latent, *mlp, prior=prior, likelihood=likelihood)
        modules = {}
        if self.posterior == "iaf":
            modules["flow"] = IAF(self.num_flows, self.flow_hidden, dtype)
        if self.architecture == "conv":
            modules = dict(
                encoder=ConvEncoder(top, image_size, self.conv_channels, dtype),
                decoder=ConvDecoder(image_size, self.conv_channels, dtype),
            )
        return VAE(top, *mlp, prior=prior, likelihood=likelihood, **modules)

    def build_objective(self, steps_per_epoch: int, num_train: int = 0) -> Objective:
        """The training objective, with the beta schedule converted to steps (the
        likelihood is the model's: `build_model`); `num_train`, the training images, is
        btcvae's N (0: each batch's size)."""
        return Objective(
            bound=self.objective,
            num_samples=self.num_samples,
            free_bits=self.free_bits,
            gradient_estimator=self.gradient_estimator,
            num_groups=self.num_groups,
            ciwae_beta=self.ciwae_beta,
            tc_weight=self.tc_weight,
            tc_estimator=self.tc_estimator,
            dataset_size=num_train,
            mmd_weight=self.mmd_weight,
            mmd_kernel=self.mmd_kernel,
            mmd_bandwidth=self.mmd_bandwidth,
            beta_schedule=beta_schedule(
                self.beta_schedule,
                steps_per_epoch,
                self.warmup_epochs,
                self.cycle_epochs,
                self.cycle_ramp,
            ),
        )

    def learning_rate_fn(self, steps_per_epoch: int) -> optax.Schedule:
        """The learning rate at each optimiser step."""
        return optim.learning_rate_schedule(
            self.lr_schedule, self.learning_rate, steps_per_epoch, self.epochs
        )

    def build_optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """The optax transformation these settings describe."""
        # A constant rate goes in as a number: optax then keeps no step count for it.
        if self.lr_schedule == "constant":
            learning_rate = self.learning_rate
        else:
            learning_rate = self.learning_rate_fn(steps_per_epoch)
        return optim.make_optimizer(
            self.optimizer,
            learning_rate,
            grad_clip=self.grad_clip,
            weight_decay=self.weight_decay,
        )


def config_from_dict(values: dict[str, Any]) -> Config:
    """A Config from a dict such as a saved config.json; unknown keys are an InputError."""
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"unknown settings {unknown}; known ones are {sorted(names)}")
    values = dict(values)
    for name in ("latent", "hidden_sizes", "conv_channels"):
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    return Config(**values)


def as_flag(value) -> str:
    """A setting as it is written on the command line: 40,40, not (40, 40)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def model_fields() -> tuple[str, ...]:
    """The settings that make the model (the "model" group): its shapes and likelihood."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata["group"] == "model")


def check_same_model(source: Config, config: Config, what: str) -> None:
    """Raises InputError naming each model setting of `config` that differs from those of
    `source`, the settings of the trained model that `what` names."""
    differ = [name for name in model_fields() if getattr(source, name) != getattr(config, name)]
    if differ:
        theirs = " ".join(f"--{name}={as_flag(getattr(source, name))}" for name in differ)
        ours = ", ".join(f"--{name}={as_flag(getattr(config, name))}" for name in differ)
        raise InputError(
            f"{what} is a model of other settings: it has {theirs} where this run has "
            f"{ours}; pass {theirs}, or start without {what.split('=')[0]}"
        )


def check_compatible(saved: Config, config: Config) -> None:
    """Raises InputError naming the settings that a resumed run may not change."""
    changed = [
        f"--{field.name} (checkpoint {as_flag(getattr(saved, field.name))}, "
        f"now {as_flag(getattr(config, field.name))})"
        for field in dataclasses.fields(Config)
        if field.name not in RESUMABLE_CHANGES
        and getattr(saved, field.name) != getattr(config, field.name)
    ]
    if saved.lr_schedule == config.lr_schedule == "cosine" and saved.epochs != config.epochs:
        changed.append(
            f"--epochs (checkpoint {saved.epochs}, now {config.epochs}) with "
            "--lr_schedule=cosine, whose decay spans the run"
        )
    if changed:
        raise InputError(
            f"--workdir={config.workdir} holds a checkpoint of another run: {'; '.join(changed)}; "
            "use the same flags to resume, or choose a new --workdir"
        )
