"""The shipped models (`vae_jax.pretrained`): trained, shipped with a card, scored.

    python experiments/zoo.py train NAME [--data_dir=DATA_DIR]  # [full run] minutes to hours
    python experiments/zoo.py ship NAME     # its weights and card into vae_jax/pretrained/
    python experiments/zoo.py score NAME [--data_dir=DATA_DIR]  # the card's evaluation
    python experiments/zoo.py table         # the cards as docs/pretrained.md's table

`train` runs `python -m vae_jax.main` with the model's flags (`MODELS`) into
runs/zoo/NAME, first writing what the card says of the machine (commit, versions, CPU or
GPU, date) to runs/zoo/NAME/zoo_context.json; run again, it resumes from the newest
checkpoint, and records that sitting too (the card names each machine and its epochs).
`ship` writes the run's final parameters (the moving average, where the run
keeps one) as vae_jax/pretrained/NAME.msgpack, float32 as trained, and its card NAME.json
without an evaluation. `score` runs `python -m vae_jax.evaluate --pretrained=NAME` on all
10,000 test images at k = 1, 50 and 5000 (runs/zoo/NAME.eval) and puts the numbers on
the card, with the `check`: -L_100 of the first 1,000 test images under evaluate's key,
which tests/test_pretrained.py scores again. DATA_DIR is a TFDS data dir or a folder of
the four MNIST IDX files; left out, the download cache.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from itertools import groupby

import flax
import jax
import numpy as np
from absl import app, flags

from vae_jax import bounds, data, pretrained
from vae_jax.checkpoint import complete_epochs
from vae_jax.config import as_flag
from vae_jax.evaluate import EVAL_FILE, PARAMS_FILES
from vae_jax.train import run_keys
from vae_jax.workdir import CONFIG_FILE, IMAGE_SHAPE_KEY, METRICS_FILE, load_model, read_metrics
from vae_jax.workdir import write_params as write_weights

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS or IDX folder; unset: the cache.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/zoo", "Where the runs and evaluations go.")
_EPOCHS = flags.DEFINE_integer(
    "epochs", None, "train: override the model's epochs (a rehearsal; the card says so)."
)
_NLL_SAMPLES = flags.DEFINE_integer(
    "nll_samples", 5000, "score: k of the NLL estimate (5000; less only to rehearse)."
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.dirname(pretrained.__file__)  # the package's, wherever it is imported from
CONTEXT_FILE = "zoo_context.json"
CHECK = dict(num_images=1000, num_samples=100)  # the slice the tests score again


@dataclasses.dataclass(frozen=True)
class Model:
    """A shipped model: what it is, and the flags of `python -m vae_jax.main` that train it."""

    summary: str
    flags: tuple[str, ...]
    params: str = "final"  # which of the run's parameter files ships (evaluate's --params)


# The binarized models train on all 60,000 training images and ship the moving average of
# their last epoch: at the end of a cosine decay that is also the best epoch (the ladder's
# runs, which held 10,000 out for validation, found their best within the last 5% of epochs),
# and the 10,000 images held out would otherwise be lost to training.
_BENCHMARK = (
    "--binarization=dynamic",
    "--lr_schedule=cosine",
    "--ema_decay=0.999",
    "--objective=iwae",
    "--num_samples=5",
    "--gradient_estimator=dreg",
)
MODELS = {
    "mnist_reference": Model(
        summary="The seed blog's recipe as published: the reference network (784-512-256, "
        "latent 64, prior N(0, I)) on grayscale pixels, BCE + KL, Adam 1e-3, batch 256, "
        "20 epochs. Its bounds are not likelihoods: the Bernoulli of grayscale pixels is no "
        "density of them.",
        flags=(),
    ),
    "mnist_binarized": Model(
        summary="The reference network on dynamically binarized MNIST, trained with the best "
        "recipe found for it here: IWAE k = 5 with DReG, a moving average of the parameters "
        "(0.999), Adam 1e-3 decayed to 0 by a cosine over 400 epochs.",
        flags=(*_BENCHMARK, "--epochs=400"),
    ),
    "mnist_vamp_hierarchy": Model(
        summary="Two stochastic layers of 40 with a VampPrior of 500 pseudo-inputs and gated "
        "300-300 MLPs (the HVAE of Tomczak & Welling 2018), dynamically binarized MNIST, "
        "IWAE k = 5 with DReG, a moving average, a KL warm-up over 50 epochs and a cosine "
        "over 200.",
        flags=(
            *_BENCHMARK,
            "--latent=40,40",
            "--prior=vamp",
            "--num_pseudo_inputs=500",
            "--activation=gated",
            "--hidden_sizes=300,300",
            "--beta_schedule=linear",
            "--warmup_epochs=50",
            "--epochs=200",
        ),
    ),
}


def _run_dir(name: str) -> str:
    return os.path.join(_WORKDIR.value, name)


def model_flags(name: str) -> list[str]:
    """The flags of `python -m vae_jax.main` that train `name` (with --epochs' override)."""
    kept = [flag for flag in MODELS[name].flags if not (_EPOCHS.value and "--epochs=" in flag)]
    return kept + ([f"--epochs={_EPOCHS.value}"] if _EPOCHS.value else [])


def training_command(name: str) -> str:
    """The command that trains `name`, as a user types it (data from the download cache)."""
    return " ".join(["python -m vae_jax.main", f"--workdir=runs/zoo/{name}", *model_flags(name)])


def machine() -> str:
    """This machine's accelerator, or its CPU model and core count."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{jax.device_count()} x {device.device_kind}"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def context() -> dict:
    """What a card says of where a model was trained or scored."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "vae_jax"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "commit": commit + (" (with uncommitted changes to vae_jax/)" if dirty else ""),
    }


def _record_sitting(folder: str, name: str) -> None:
    """Writes where the model trains to the run's zoo_context.json: its commands and the
    first sitting's context, then one entry in `sittings` per start (a resume may be on
    another machine, under another commit), with the first epoch it trains."""
    path = os.path.join(folder, CONTEXT_FILE)
    here = context()
    if os.path.exists(path):
        with open(path) as f:
            where = json.load(f)
        # A run begun before sittings were recorded: its first one is the file's context.
        where.setdefault("sittings", [{**{k: where[k] for k in here}, "first_epoch": 1}])
    else:
        rehearsal = f" --epochs={_EPOCHS.value}" if _EPOCHS.value else ""
        commands = {
            "command": training_command(name),
            "zoo_command": f"python experiments/zoo.py train {name}{rehearsal}",
        }
        where = {**here, **commands, "sittings": []}
    first_epoch = max(complete_epochs(folder), default=0) + 1
    if not where["sittings"] or where["sittings"][-1]["first_epoch"] != first_epoch:
        where["sittings"].append({**here, "first_epoch": first_epoch})
    with open(path, "w") as f:
        json.dump(where, f, indent=2)


def train(name: str) -> None:
    folder = _run_dir(name)
    os.makedirs(folder, exist_ok=True)
    _record_sitting(folder, name)
    command = [sys.executable, "-m", "vae_jax.main", f"--workdir={folder}", "--checkpoint_every=5"]
    if _DATA_DIR.value:
        command.append(f"--data_dir={_DATA_DIR.value}")
    sys.exit(subprocess.run([*command, *model_flags(name)]).returncode)


def _sittings_summary(where: dict, epochs: int) -> dict:
    """`where` (a zoo_context.json) with its machine and date naming every sitting of a
    run trained in more than one, and the epochs each trained."""
    sittings = where.get("sittings", [])
    lasts = [later["first_epoch"] - 1 for later in sittings[1:]] + [epochs]
    spans = [(s, last) for s, last in zip(sittings, lasts, strict=True) if s["first_epoch"] <= last]
    if len(spans) <= 1:  # one sitting: the context as it was first written
        return {key: value for key, value in where.items() if key != "sittings"}
    sittings = [sitting for sitting, _ in spans]  # less any start that trained no epoch
    runs_on = []  # consecutive sittings on one kind of machine: one span of epochs
    for machine, group in groupby(spans, key=lambda span: span[0]["machine"]):
        group = list(group)
        runs_on.append((machine, group[0][0]["first_epoch"], group[-1][1]))
    machine = "; ".join(f"{m} (epochs {first}-{last})" for m, first, last in runs_on)
    if len(runs_on) == 1:
        machine = f"{runs_on[0][0]}, in {len(spans)} sittings"
    dates = sorted({sitting["date"] for sitting in sittings})
    date = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return {**where, "machine": machine, "date": date, "sittings": sittings}


def _training_facts(name: str, folder: str, averaged: bool) -> dict:
    history = read_metrics(os.path.join(folder, METRICS_FILE))
    with open(os.path.join(folder, CONTEXT_FILE)) as f:
        where = _sittings_summary(json.load(f), history[-1]["epoch"])
    seconds = sum(r["epoch_time_s"] + r.get("compile_time_s", 0.0) for r in history)
    return {
        "command": where.pop("command", training_command(name)),
        "zoo_command": where.pop("zoo_command", f"python experiments/zoo.py train {name}"),
        "epochs": history[-1]["epoch"],
        "time_min": round(seconds / 60, 1),
        "time_is": "the epochs' training time, compilation included; the per-epoch test "
        "ELBO excluded",
        **where,
        "params": ("the moving average of the parameters" if averaged else "the parameters")
        + (" after the last epoch" if MODELS[name].params == "final" else " of the best epoch"),
        "final_test_neg_elbo": round(history[-1]["test_elbo"], 4),
    }


def ship(name: str) -> None:
    folder = _run_dir(name)
    run = load_model(folder, PARAMS_FILES[MODELS[name].params])
    weights = os.path.join(SHIPPED, f"{name}.msgpack")
    write_weights(weights, run.params)
    with open(weights, "rb") as f:
        content = f.read()
    config = dataclasses.replace(run.config, workdir=f"runs/zoo/{name}", data_dir=None)
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        image_shape = json.load(f)[IMAGE_SHAPE_KEY]
    card = {
        "name": name,
        "summary": MODELS[name].summary,
        "config": {**json.loads(config.to_json()), IMAGE_SHAPE_KEY: image_shape},
        "weights": {
            "file": f"{name}.msgpack",
            "bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(run.params))),
            "format": "the params collection as flax.serialization.to_bytes writes it, "
            "float32: the numbers trained and scored, not quantized",
        },
        "data": {
            "dataset": run.config.dataset,
            "train_images": 60_000 - run.config.num_valid,
            "binarization": run.config.binarization,
            "pixels": "binary: each pixel drawn afresh every epoch with P(1) = its intensity"
            if run.config.binarization == "dynamic"
            else "grayscale intensities in [0, 1]",
            "test_inputs": "the 10,000 test images, binarized once with a fixed seed "
            "(vae_jax.data.eval_inputs)"
            if run.config.binarization == "dynamic"
            else "the 10,000 test images, grayscale",
        },
        "training": _training_facts(name, folder, run.config.ema_decay > 0),
    }
    scored = ""
    if name in pretrained.names():  # the same weights keep their evaluation
        earlier = pretrained.card(name)
        if earlier["weights"]["sha256"] == card["weights"]["sha256"] and "evaluation" in earlier:
            card.update(evaluation=earlier["evaluation"], check=earlier["check"])
            scored = ", its evaluation kept (the same weights)"
    _write_card(name, card)
    print(f"shipped {weights} ({len(content):,} bytes) and its card{scored or ', not yet scored'}")


def _write_card(name: str, card: dict) -> None:
    with open(os.path.join(SHIPPED, f"{name}.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def check_bound(name: str, test_images: np.ndarray) -> float:
    """-L_k of the card's check: the first `CHECK['num_images']` test inputs at k =
    `CHECK['num_samples']`, under the key that `vae_jax.evaluate` uses for that k."""
    model, params, config, _ = pretrained.load(name)
    k = CHECK["num_samples"]
    key = jax.random.fold_in(run_keys(config.seed).eval, k)
    images = data.eval_inputs(test_images[: CHECK["num_images"]], config.binarization)
    return float(np.mean(bounds.estimate_negative_bound(model, params, images, key, k)))


def score(name: str) -> None:
    card = pretrained.card(name)
    folder = os.path.abspath(_run_dir(name) + ".eval")
    if os.path.exists(os.path.join(folder, EVAL_FILE)):
        os.remove(os.path.join(folder, EVAL_FILE))
    command = [
        sys.executable,
        "-m",
        "vae_jax.evaluate",
        f"--pretrained={name}",
        f"--workdir={folder}",
        f"--num_samples={','.join(str(k) for k in sorted({1, 50, _NLL_SAMPLES.value}))}",
    ]
    if _DATA_DIR.value:
        command.append(f"--data_dir={os.path.abspath(_DATA_DIR.value)}")
    # From the package this script imported (not the current folder's, which `-m` would
    # put first): the one the card was just shipped into.
    package_root = os.path.dirname(os.path.dirname(SHIPPED))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *sys.path])}
    subprocess.run(command, check=True, cwd=os.path.dirname(folder), env=environment)
    with open(os.path.join(folder, EVAL_FILE)) as f:
        results = json.load(f)
    test_images = data.load_dataset(card["config"]["dataset"], _DATA_DIR.value).test_images
    card["evaluation"] = {
        "command": f"python -m vae_jax.evaluate --pretrained={name} --workdir=OUT",
        "num_images": results["num_images"],
        "bounds": {
            k: {"neg_bound": b["neg_bound"], "stderr": b["stderr"]}
            for k, b in results["bounds"].items()
        },
        "nll": results["nll"],
        "nll_stderr": results["nll_stderr"],
        "nll_num_samples": results["nll_num_samples"],
        "test_neg_elbo": results["bounds"]["1"]["neg_bound"],
        "true_likelihood": results["protocol"]["true_likelihood"],
        "active_units": results["active_units"],
        "active_units_by_layer": [layer["active_units"] for layer in results["layers"]],
        "latent": results["latent"],
        "scoring_time_s": round(sum(b["time_s"] for b in results["bounds"].values()), 1),
        **context(),
    }
    card["check"] = {
        **CHECK,
        "key": "jax.random.fold_in(vae_jax.train.run_keys(seed).eval, num_samples), as "
        "python -m vae_jax.evaluate --num_images=1000 --num_samples=100",
        "neg_bound": check_bound(name, test_images),
    }
    _write_card(name, card)
    print(f"scored {name}: NLL {results['nll']:.2f} ± {results['nll_stderr']:.2f}")


def table() -> None:
    """The cards as one Markdown table (docs/pretrained.md)."""
    print(
        "| model | NLL = -L_5000 | test -L_1 (ELBO) | active units | epochs | training | "
        "trained on | parameters | file | SHA-256 |\n" + "| --- " * 10 + "|"
    )
    for name in pretrained.names():
        card = pretrained.card(name)
        evaluation, training, weights = card["evaluation"], card["training"], card["weights"]
        likelihood = "" if evaluation["true_likelihood"] else " (no likelihood)"
        layers = ", ".join(map(str, evaluation["active_units_by_layer"]))
        print(
            f"| `{name}` | **{evaluation['nll']:.2f}** ± {evaluation['nll_stderr']:.2f}"
            f"{likelihood} | {evaluation['test_neg_elbo']:.2f} | {layers} of "
            f"{as_flag(tuple(card['config']['latent']))} | {training['epochs']} | "
            f"{training['time_min']} min, {training['date']} | {training['machine']}, jax "
            f"{training['jax']}, commit {training['commit']} | {weights['parameters']:,} | "
            f"{weights['bytes'] / 1e6:.1f} MB | `{weights['sha256'][:16]}...` |"
        )


def main(argv):
    commands = {"train": train, "ship": ship, "score": score}
    if len(argv) == 2 and argv[1] == "table":
        return table()
    if len(argv) != 3 or argv[1] not in commands or argv[2] not in MODELS:
        raise app.UsageError(
            f"usage: zoo.py {{train,ship,score}} {{{','.join(MODELS)}}}, or zoo.py table"
        )
    commands[argv[1]](argv[2])


if __name__ == "__main__":
    app.run(main)
