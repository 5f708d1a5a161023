"""One training run in its workdir: `train_and_evaluate(config)`.

What `python -m vae_jax.main` runs, as named pieces that `_train_and_evaluate` calls
top to bottom:

    build_run         data, model, objective, state and keys; writes no file
    restore_or_init   the newest checkpoint, or the initial state: resume sits here alone
    compile_run       the training epoch and the evaluation programs, ahead of time
    train_and_score_epoch  one epoch trained and scored: its record (`epoch_record`)
    Reporter          one fan-out of each record to metrics.jsonl, the console,
                      TensorBoard and the caller's writers; a no-op off process 0
    BestEpoch         the best validation epoch: best parameters and early stopping
    is_time           the one "is it time" rule for checkpoints and pictures
    check_divergence  a non-finite loss or parameter stops the run
    finish            the final parameters and pictures

A caller adds numbers of its own to every epoch's record with `callbacks`.
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import (
    bounds,
    checkpoint,
    data,
    errors,
    folders,
    parallel,
    plots,
    precision,
    pretrained,
    summaries,
    train,
    workdir,
)
from vae_jax.config import Config, check_compatible, check_same_model
from vae_jax.errors import InputError
from vae_jax.models import reconstruct_images, sample_images, with_dtype

NUM_SAMPLES = 64  # digits in samples.png
NUM_RECONSTRUCTIONS = 16  # test images in reconstructions.png
EARLY_STOPPED = "early_stopped"  # in the last record of a run --early_stop_patience ended
FINISHED_EARLY = "finished_early"  # in the last record of a run the caller's should_finish ended
# Every name a run writes into an epoch's record, or into the record it returns: a
# callback may not return one of them (it would be overwritten, or steer the run).
RECORD_KEYS = frozenset(
    {
        "epoch", "train_objective", "train_loss", "train_recon", "train_kl", "beta",
        "grad_norm", "learning_rate", "test_elbo", "test_loss", "test_recon", "test_kl",
        "epoch_time_s", "images_per_s", "valid_elbo", "compile_time_s", "skipped_batches",
        EARLY_STOPPED, FINISHED_EARLY, "stopped", "finished",
    }
)  # fmt: skip

# f(epoch, record, params) -> None or {name: number}: numbers that join the epoch's record.
Callback = Callable[[int, Mapping[str, Any], Any], Mapping[str, Any] | None]


def train_and_evaluate(
    config: Config,
    should_stop: Callable[[], bool] = lambda: False,
    writers: Sequence[summaries.Writer] = (),
    callbacks: Sequence[Callback] = (),
    should_finish: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Trains a VAE as `config` says, writing metrics, pictures and parameters to its workdir.

    Trains data-parallel over every device (`vae_jax.parallel`); in a multi-process run
    every process calls this, and process 0 alone writes files and prints.

    A workdir holding a checkpoint resumes from its newest one: the result is the same,
    bit for bit, as a run that was never interrupted. `should_stop` is polled after each
    epoch; when it returns True (in any process) the run writes a checkpoint and returns
    early. `should_finish` too: True ends the run for good, as early stopping does (its
    last record says `"finished_early": true`). The workdir is locked for the whole run.

    Each epoch's record goes to metrics.jsonl, the console, `writers`
    (`vae_jax.summaries.Writer`: W&B, MLflow, ...) and, with `config.tensorboard`,
    TensorBoard, from process 0 only. Before that, each of `callbacks` is called as
    `f(epoch, record, params)` with the parameters that are scored (the moving average
    with --ema_decay), as a copy the callback may keep; the numbers of the dict it
    returns (or None) join the record, so they are written, shown and resumed like the
    rest. A callback may not return a name of `RECORD_KEYS`. Callbacks run on every
    process.

    Returns the last epoch's metrics record, with `"stopped": True` after a stop.
    Raises ImportError at once when the [all] extra is missing, and InputError, before
    any training and without touching an earlier run's files, when the config, data or
    checkpoint are unusable or another process uses the workdir, and after writing the
    metrics of the epoch where training diverged (the last good checkpoint stays); a
    workdir it made for a run that failed before writing anything is removed.
    """
    config.validate()
    errors.require_command_extra(
        "vae_jax.train_and_evaluate", False, errors.run_modules(config.tensorboard)
    )
    finished = finished_run(config)
    if finished is not None:
        return finished
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    resuming = checkpoint.has_checkpoint(config.workdir) and not config.overwrite
    # The same run stopped before its first checkpoint: start it again (it is a pure
    # function of its config, so nothing is lost).
    restarting = not resuming and workdir.is_same_run(config.workdir, config)
    start = None if resuming else starting_point(config)  # a resumed run has its own
    outputs = (*workdir.OUTPUTS, workdir.BEST_PARAMS_FILE)
    with folders.removed_unless_used(config.workdir):
        workdir.prepare(config, () if resuming or restarting else outputs)
        with _hold(config.workdir), contextlib.ExitStack() as closing:
            run = build_run(config, mesh, start)
            restored = restore_or_init(config, run, resuming)
            reporter = closing.enter_context(
                Reporter.open(config, run, restored.history, writers, resuming)
            )
            stops = Stops(should_stop, should_finish)
            return _train_and_evaluate(run, restored, reporter, stops, callbacks)


def finished_run(config: Config) -> dict[str, Any] | None:
    """Checks `config` against the run in its workdir from config.json, before any work.

    Returns the last metrics record of a run finished there with these flags (at least
    `config.epochs` epochs, or stopped early by its validation ELBO; its parameters
    written), saying so in one line and touching no file; None when there is a run to
    train. Raises InputError when the workdir holds a checkpoint of a run that these
    flags may not resume. Reads two small files only, so the answer comes before any
    data is read or model built.
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
    if not history or history[-1]["epoch"] > last_epoch:
        return None
    stopped_early = ends_early(config, history)
    if history[-1]["epoch"] < config.epochs and not stopped_early:
        return None
    if parallel.is_writer():
        how = "finished:"
        if stopped_early:
            by = "should_finish" if history[-1].get(FINISHED_EARLY) else "its validation ELBO"
            how = f"stopped early by {by} at"
        longer = "" if stopped_early else "--epochs=N to train longer, "
        print(
            f"{how} epoch {history[-1]['epoch']} of {config.epochs} in {folder}; "
            f"{longer}--overwrite to start again",
            flush=True,
        )
    return {**history[-1], "finished": True}


def starting_point(config: Config) -> workdir.LoadedRun | None:
    """The trained model whose parameters `--init_from` starts the run from (None without
    it). Raises InputError when it names no such model, or one of other model settings."""
    if not config.init_from:
        return None
    start = pretrained.load_any(config.init_from)
    check_same_model(start.config, config, f"--init_from={config.init_from}")
    return start


def ends_early(config: Config, history: list[dict[str, Any]]) -> bool:
    """Whether a run whose records are `history` ended early for good under `config`: its
    caller's `should_finish` ended it, or `config`'s early stopping would have (a run
    stopped early and resumed with a larger --early_stop_patience goes on)."""
    last = history[-1]
    if last.get(FINISHED_EARLY):
        return True
    return bool(last.get(EARLY_STOPPED)) and BestEpoch.of(config, history).exhausted(last["epoch"])


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


# --- Building, restoring and compiling --------------------------------------------------


class Run(NamedTuple):
    """What a run is built from: everything but the state that training changes."""

    config: Config
    mesh: jax.sharding.Mesh
    model: Any  # trained, in --dtype
    eval_model: Any  # the same in float32: what is scored and drawn
    objective: Any
    keys: train.RunKeys
    initial_state: train.TrainState  # replicated over the mesh
    image_shape: tuple[int, ...]
    source: str  # where the data were read from, for the console
    num_train: int
    steps_per_epoch: int
    learning_rate_fn: Callable[[int], Any]
    train_images: jax.Array  # uint8 [num_train, pixels], replicated
    host_test_images: np.ndarray  # float32 [num_test, pixels]: grayscale, or binarized once
    host_valid_images: np.ndarray | None  # likewise, with --num_valid


def build_run(config: Config, mesh, start: workdir.LoadedRun | None = None) -> Run:
    """Reads the data and builds the model, objective, optimiser and initial state: the
    parameters of `start` (`starting_point`), else drawn from the run's init key.

    Writes no file. Raises InputError for data that the config cannot train on, or
    that `start` was not trained on images of the shape of.
    """
    dataset = data.load_dataset(
        config.dataset,
        config.data_dir,
        0 if config.num_valid else config.num_train,  # the held-out images are the last
        allow_download=config.download,
    )
    valid_images = None
    if config.num_valid:
        dataset, valid_images = data.split_validation(dataset, config.num_valid, config.num_train)
    num_train = len(dataset.train_images)
    if config.batch_size > num_train:
        raise InputError(
            f"--batch_size={config.batch_size} is larger than the {num_train} training "
            "images; lower --batch_size"
        )
    steps_per_epoch = -(-num_train // config.batch_size)
    if start is not None and start.image_shape != dataset.image_shape:
        raise InputError(
            f"--init_from={config.init_from} is a model of {start.image_shape} images, and "
            f"{dataset.source} holds {dataset.image_shape} ones; fine-tune it on images of "
            "its shape"
        )
    model = config.build_model(dataset.image_shape)
    keys = train.run_keys(config.seed)
    state = train.create_train_state(
        model,
        keys.init,
        config.build_optimizer(steps_per_epoch),
        config.ema_decay,
        params=None if start is None else start.params,
    )
    return Run(
        config=config,
        mesh=mesh,
        model=model,
        eval_model=with_dtype(model, jnp.float32),  # Scored in float32 whatever --dtype.
        objective=config.build_objective(steps_per_epoch, num_train),
        keys=keys,
        initial_state=parallel.put_replicated(state, mesh),
        image_shape=dataset.image_shape,
        source=dataset.source,
        num_train=num_train,
        steps_per_epoch=steps_per_epoch,
        learning_rate_fn=config.learning_rate_fn(steps_per_epoch),
        # Every device holds the uint8 training set (47 MB for MNIST) and gathers its own
        # slice of each global batch from it, so no batch crosses the host-device link.
        train_images=parallel.put_replicated(dataset.train_images, mesh),
        host_test_images=data.eval_inputs(dataset.test_images, config.binarization),
        host_valid_images=None
        if valid_images is None
        else data.eval_inputs(valid_images, config.binarization),
    )


class Restored(NamedTuple):
    """Where a run continues from."""

    state: train.TrainState
    train_key: jax.Array
    history: list[dict[str, Any]]  # the metrics records of the epochs done
    checkpoints: Any  # the run's orbax CheckpointManager


def restore_or_init(config: Config, run: Run, resuming: bool) -> Restored:
    """The state, train key and metrics to continue from: the newest checkpoint's, or the
    initial ones. Tidies the checkpoints first (process 0): a resumed run drops a save
    cut short, whose epoch is redone; a fresh one drops the checkpoints and curves of the
    run it replaces. Raises InputError for a checkpoint that cannot be resumed."""
    folder = config.workdir
    train_key = parallel.put_replicated(run.keys.train, run.mesh)
    # Every process has decided from the same files: from here on, process 0 changes them.
    parallel.barrier("workdir checked")
    if parallel.is_writer():
        if resuming:
            checkpoint.remove_unfinished(folder)
        else:  # --overwrite, or a restart
            for name in (checkpoint.CHECKPOINT_DIR, summaries.TENSORBOARD_DIR):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    parallel.barrier("checkpoints tidied")
    checkpoints = checkpoint.manager(folder, config.keep_checkpoints)
    if not resuming:
        return Restored(run.initial_state, train_key, [], checkpoints)
    state, train_key, last_epoch = checkpoint.restore_latest(
        checkpoints, run.initial_state, train_key, config
    )
    history = workdir.read_metrics(
        os.path.join(folder, workdir.METRICS_FILE), up_to_epoch=last_epoch
    )
    if history and history[-1].pop(EARLY_STOPPED, False) and parallel.is_writer():
        # Resumed past it: this run's flags allow more epochs (`ends_early`).
        print(f"going on after the early stop of epoch {last_epoch}, as these flags allow")
    return Restored(state, train_key, history, checkpoints)


class Programs(NamedTuple):
    """The run's compiled programs, and how long compiling them took."""

    run_epoch: Callable  # (state, train_images, epoch_key, beta) -> (state, metrics)
    run_test: Callable  # params -> ElboTerms of the test images
    run_valid: Callable | None  # params -> ElboTerms of the validation images
    beta: jax.Array  # --beta, replicated
    compile_time_s: float


def compile_run(run: Run, state, train_key) -> Programs:
    """Compiles the training epoch (at --matmul_precision) and the evaluation (at full
    precision) ahead of time, so that compilation is timed apart from training. The
    stepwise loop compiles its step on its first call, inside the first epoch's time."""
    config, mesh = run.config, run.mesh
    beta = parallel.put_replicated(np.float32(config.beta), mesh)
    start = time.perf_counter()
    epoch_options = dict(
        objective=run.objective,
        batch_size=config.batch_size,
        binarization=config.binarization,
        on_nan=config.on_nan,
        mesh=mesh,
    )
    with precision.training(config.matmul_precision):
        if _epoch_loop(config) == "scan":
            epoch = train.train_epoch.lower(
                state, run.train_images, train_key, beta, **epoch_options
            ).compile()
        else:
            epoch = functools.partial(train.train_epoch_stepwise, **epoch_options)

    def run_epoch(*args):
        with precision.training(config.matmul_precision):
            return epoch(*args)

    def scorer(host_images, key):
        images = parallel.put_replicated(host_images, mesh)
        compiled = bounds.jitted_elbo_terms.lower(
            run.eval_model, state.eval_params, images, key, beta, objective=run.objective, mesh=mesh
        ).compile()
        return lambda params: compiled(params, images, key, beta)

    eval_key = parallel.put_replicated(run.keys.eval, mesh)
    run_test = scorer(run.host_test_images, eval_key)
    run_valid = None
    if run.host_valid_images is not None:
        run_valid = scorer(run.host_valid_images, jax.random.fold_in(eval_key, 1))
    return Programs(run_epoch, run_test, run_valid, beta, time.perf_counter() - start)


def _epoch_loop(config: Config) -> str:
    if config.epoch_loop != "auto":
        return config.epoch_loop
    on_cpu = jax.devices()[0].platform == "cpu"
    return "steps" if config.architecture == "conv" and on_cpu else "scan"


# --- An epoch -----------------------------------------------------------------------------


def train_and_score_epoch(run: Run, programs: Programs, state, train_key, epoch: int):
    """Trains epoch `epoch` and scores its parameters: (state, train metrics, record)."""
    start = time.perf_counter()
    state, train_metrics = programs.run_epoch(
        state, run.train_images, jax.random.fold_in(train_key, epoch), programs.beta
    )
    train_metrics = jax.device_get(train_metrics)  # Waits for the epoch to finish.
    epoch_time_s = time.perf_counter() - start
    test_terms = jax.device_get(programs.run_test(state.eval_params))
    valid_terms = None
    if programs.run_valid is not None:
        valid_terms = jax.device_get(programs.run_valid(state.eval_params))
    learning_rate = float(run.learning_rate_fn(epoch * run.steps_per_epoch - 1))
    record = epoch_record(
        epoch, train_metrics, test_terms, valid_terms, learning_rate, epoch_time_s, run.num_train
    )
    if run.config.on_nan == "skip_batch":
        record["skipped_batches"] = int(train_metrics["skipped_batches"])
    return state, train_metrics, record


def epoch_record(
    epoch, train_metrics, test_terms, valid_terms, learning_rate, epoch_time_s, num_train
) -> dict[str, Any]:
    """An epoch's metrics record (one line of metrics.jsonl), from host values alone."""
    record = {
        "epoch": epoch,
        "train_objective": float(train_metrics["objective"]),
        "train_loss": float(train_metrics["loss"]),
        "train_recon": float(train_metrics["recon"]),
        "train_kl": float(train_metrics["kl"]),
        "beta": float(train_metrics["beta"]),
        "grad_norm": float(train_metrics["grad_norm"]),
        "learning_rate": learning_rate,
        "test_elbo": float(np.mean(test_terms.recon + test_terms.kl)),
        "test_loss": float(np.mean(test_terms.loss)),
        "test_recon": float(np.mean(test_terms.recon)),
        "test_kl": float(np.mean(test_terms.kl)),
        "epoch_time_s": epoch_time_s,
        "images_per_s": num_train / epoch_time_s,
    }
    if valid_terms is not None:
        record["valid_elbo"] = float(np.mean(valid_terms.recon + valid_terms.kl))
    return record


def callback_numbers(callbacks: Sequence[Callback], epoch: int, record, params) -> dict:
    """What `callbacks` add to an epoch's record: each returns None or {name: number}.

    Raises ValueError for a result that is not that, or that renames a built-in number.
    """
    added = {}
    for callback in callbacks:
        numbers_of = callback(epoch, dict(record), params)
        if numbers_of is None:
            continue
        name = getattr(callback, "__name__", repr(callback))
        if not isinstance(numbers_of, Mapping):
            raise ValueError(f"callback {name} returned {numbers_of!r}; return None or a dict")
        for key, value in numbers_of.items():
            value = np.asarray(jax.device_get(value))
            if not isinstance(key, str) or value.shape or value.dtype.kind not in "biuf":
                raise ValueError(
                    f"callback {name} returned {key!r}: {numbers_of[key]!r}; a callback returns "
                    "{name: number}"
                )
            if key in RECORD_KEYS or key in record or key in added:
                raise ValueError(
                    f"callback {name} returned {key!r}, a name the run's record uses; "
                    "name your number otherwise"
                )
            added[key] = int(value) if value.dtype.kind in "biu" else float(value)
    return added


def is_time(epoch: int, every: int, last_epoch: int) -> bool:
    """The one rule for periodic work: every `every` epochs, and at the last."""
    return epoch % every == 0 or epoch == last_epoch


def check_divergence(config: Config, run: Run, train_metrics, epoch: int) -> None:
    """Raises InputError when the epoch met a non-finite loss (with --on_nan=stop) or
    left a non-finite parameter; the last good checkpoint stays."""
    bad_step = int(train_metrics["first_nonfinite_step"])
    if not (bad_step >= 0 and config.on_nan == "stop" or not train_metrics["params_finite"]):
        return
    bad_step = max(bad_step, 0)
    kept = max(checkpoint.complete_epochs(config.workdir), default=None)
    raise InputError(
        f"training diverged: non-finite loss or parameters at epoch {epoch}, step "
        f"{bad_step} of {run.steps_per_epoch} (global step "
        f"{(epoch - 1) * run.steps_per_epoch + bad_step}); "
        + (f"the checkpoint of epoch {kept} is kept; " if kept else "no checkpoint yet; ")
        + "lower --learning_rate, or pass --on_nan=skip_batch"
    )


@dataclasses.dataclass
class BestEpoch:
    """The lowest validation ELBO so far and its epoch, for best_params.msgpack and for
    early stopping, which counts epochs without improvement only after the KL warm-up
    (as the VampPrior paper's look-ahead does)."""

    patience: int  # 0: never stop early
    counts_from: float  # the epoch after which a lack of improvement counts
    elbo: float = np.inf
    epoch: int = 0

    @classmethod
    def of(cls, config: Config, history: list[dict]) -> "BestEpoch":
        warmup = config.warmup_epochs if config.beta_schedule == "linear" else 0.0
        best = cls(config.early_stop_patience, warmup)
        for record in history:
            best.update(record)
        return best

    def update(self, record: Mapping[str, Any]) -> bool:
        """Takes an epoch's record; whether its validation ELBO is the best so far."""
        value = record.get("valid_elbo")
        if value is None or not value < self.elbo:
            return False
        self.elbo, self.epoch = value, record["epoch"]
        return True

    def exhausted(self, epoch: int) -> bool:
        """Whether `patience` epochs past the warm-up have not improved on the best."""
        return bool(self.patience) and epoch - max(self.epoch, self.counts_from) >= self.patience


# --- The fan-out of each record --------------------------------------------------------


class Reporter:
    """Where a run's records and files go: metrics.jsonl, the console, TensorBoard and the
    caller's writers, the parameters and pictures. Off process 0 every method does
    nothing, so the loop has no `if writer:`."""

    def __init__(self, config: Config, run: Run, writers: Sequence[summaries.Writer]):
        self.config, self.run, self.folder = config, run, config.workdir
        self.active = parallel.is_writer()
        self.writers = list(writers) if self.active else []
        self.metrics_path = os.path.join(self.folder, workdir.METRICS_FILE)

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: Config, run: Run, history, writers, resuming: bool):
        """A Reporter for a run starting after `history`: writes config.json and the
        metrics kept, opens TensorBoard, and prints where the run stands."""
        reporter = cls(config, run, writers)
        with contextlib.ExitStack() as closing:
            if reporter.active:
                workdir.write_config(config.workdir, config, run.image_shape)
                # Keep the metrics of the checkpointed epochs, drop any written after them.
                workdir.write_metrics(reporter.metrics_path, history)
                if config.tensorboard:
                    logdir = os.path.join(config.workdir, summaries.TENSORBOARD_DIR)
                    tensorboard = summaries.TensorBoardWriter(
                        logdir, len(history) + 1 if resuming else None
                    )
                    reporter.writers.append(closing.enter_context(contextlib.closing(tensorboard)))
            reporter.announce(history, resuming)
            yield reporter

    def log(self, line: str) -> None:
        if self.active:
            print(line, flush=True)

    def announce(self, history, resuming: bool) -> None:
        run, config = self.run, self.config
        self.log(
            f"data: {run.source}: {run.num_train} train, {len(run.host_test_images)} test "
            f"images of shape {run.image_shape}"
        )
        self.log(
            f"devices: {run.mesh.devices.size} x {jax.devices()[0].device_kind} in "
            f"{jax.process_count()} process(es), {config.batch_size // run.mesh.devices.size} "
            f"images per device per step; matmuls in {config.dtype} at precision "
            f"{config.matmul_precision} (scored at {precision.SCORING_PRECISION})"
        )
        if resuming:
            self.log(f"resuming from the checkpoint of epoch {len(history)} in {self.folder}")
        if config.num_valid:
            self.log(f"validation: the last {config.num_valid} training images, held out")

    def write(self, record: dict[str, Any], state, images_due: bool) -> None:
        """The epoch's record to metrics.jsonl, the console and every writer; with
        `images_due`, the sample and reconstruction grids to the writers too."""
        if not self.active:
            return
        workdir.write_metrics(self.metrics_path, [record], append=True)
        self.log(format_progress(record, self.config.epochs))
        grids = None
        if images_due and self.writers:
            grids = summary_images(self.run, jax.device_get(state.eval_params))
        for writer in self.writers:
            writer.write_scalars(record["epoch"], summaries.scalars_of(record))
            if grids is not None:
                writer.write_images(record["epoch"], grids)

    def write_params(self, name: str, params) -> None:
        if self.active:
            workdir.write_params(os.path.join(self.folder, name), params)

    def finish(self, params, history) -> None:
        """params.msgpack and the pictures, from host copies (the other processes are done)."""
        if self.active:
            self.write_params(workdir.PARAMS_FILE, params)
            write_pictures(self.run, params, history, self.folder)
        self.log(f"wrote {', '.join(workdir.OUTPUTS)} to {self.folder}")


# --- The loop -------------------------------------------------------------------------------


class Stops(NamedTuple):
    """The caller's two ways to end a run after an epoch: `pause` (a checkpoint; the same
    call resumes) and `finish` (for good, as early stopping ends it)."""

    pause: Callable[[], bool]
    finish: Callable[[], bool]


def _train_and_evaluate(run: Run, restored: Restored, reporter, stops: Stops, callbacks):
    config, (state, train_key, history, checkpoints) = run.config, restored
    reporter.log(f"compiling the training epoch and the evaluation ({config.objective}) ...")
    programs = compile_run(run, state, train_key)
    reporter.log(f"compiled in {programs.compile_time_s:.1f} s")
    best = BestEpoch.of(config, history)
    first_epoch = len(history) + 1
    for epoch in range(first_epoch, config.epochs + 1):
        state, train_metrics, record = train_and_score_epoch(run, programs, state, train_key, epoch)
        if callbacks:  # a copy of the parameters, which the next epoch's step donates
            params = jax.tree.map(jnp.copy, state.eval_params)
            record.update(callback_numbers(callbacks, epoch, record, params))
        if epoch == first_epoch:
            record["compile_time_s"] = programs.compile_time_s
        improved = best.update(record)
        if best.exhausted(epoch):
            record[EARLY_STOPPED] = True
        elif epoch < config.epochs and parallel.any_process(stops.finish()):
            record[FINISHED_EARLY] = True
        history.append(record)
        reporter.write(
            record, state, is_time(epoch, config.tensorboard_images_every, config.epochs)
        )
        check_divergence(config, run, train_metrics, epoch)
        if improved:  # Chosen on the validation images only, never on the test set.
            reporter.write_params(workdir.BEST_PARAMS_FILE, state.eval_params)
        stop = parallel.any_process(stops.pause())
        ends = EARLY_STOPPED in record or FINISHED_EARLY in record or epoch == config.epochs
        if stop or ends or is_time(epoch, config.checkpoint_every, config.epochs):
            checkpoint.save(checkpoints, epoch, state, train_key, config)
        if stop and not ends:
            reporter.log(
                f"stopped after epoch {epoch}: checkpoint written to {checkpoints.directory}; "
                "run the same command to resume"
            )
            return {**record, "stopped": True}
        if ends:
            break
    if history[-1].get(EARLY_STOPPED):
        reporter.log(
            f"early stop after epoch {history[-1]['epoch']}: no better validation ELBO for "
            f"{config.early_stop_patience} epochs since epoch {best.epoch}"
        )
    elif history[-1].get(FINISHED_EARLY):
        reporter.log(f"finished after epoch {history[-1]['epoch']}, as should_finish asked")
    reporter.finish(jax.device_get(state.eval_params), history)  # The average, with --ema_decay
    parallel.barrier("run written")
    return history[-1]


# --- Pictures and the console line ------------------------------------------------------


def summary_images(run: Run, params) -> dict[str, np.ndarray]:
    """The run's two grids, float32 [height, width, channels] in [0, 1].

    `samples`: NUM_SAMPLES digits decoded from z ~ p(z), 8 a row; `reconstructions`:
    NUM_RECONSTRUCTIONS test images above their reconstructions.
    """
    samples = sample_images(run.eval_model, params, run.keys.sample, NUM_SAMPLES)
    originals = run.host_test_images[:NUM_RECONSTRUCTIONS]
    pairs = np.concatenate(
        [originals, np.asarray(reconstruct_images(run.eval_model, params, originals))]
    )
    return {
        "samples": plots.tile_images(samples, run.image_shape, num_columns=8),
        "reconstructions": plots.tile_images(pairs, run.image_shape, len(originals)),
    }


def write_pictures(run: Run, params, history, folder: str) -> None:
    """samples.png, reconstructions.png and loss_curves.png in `folder`."""
    grids = summary_images(run, params)
    plots.save_mosaic(grids["samples"], os.path.join(folder, workdir.SAMPLES_FILE))
    plots.save_mosaic(grids["reconstructions"], os.path.join(folder, workdir.RECONSTRUCTIONS_FILE))
    plots.save_loss_curves(history, os.path.join(folder, workdir.LOSS_CURVES_FILE))


def format_progress(record: dict[str, Any], num_epochs: int) -> str:
    """One console line for an epoch's metrics record, callbacks' numbers included."""
    extra = "".join(
        f"  {name} {value:.4g}" for name, value in record.items() if name not in RECORD_KEYS
    )
    return (
        f"epoch {record['epoch']:>3}/{num_epochs}  train {record['train_loss']:8.3f}  "
        f"test {record['test_loss']:8.3f} (recon {record['test_recon']:.3f}, "
        f"kl {record['test_kl']:.3f})  "
        + (f"valid {record['valid_elbo']:8.3f}  " if "valid_elbo" in record else "")
        + f"beta {record.get('beta', 1.0):.3g}  "
        f"{record['epoch_time_s']:.3f} s  {record['images_per_s']:,.0f} images/s" + extra
    )
