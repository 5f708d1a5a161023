"""The README's reproduced tables, one command each; each prints a Markdown table.

    python experiments/tables.py reference  --data_dir=../shared/data/tensorflow_datasets
    python experiments/tables.py likelihood --data_dir=../shared/data/tensorflow_datasets
    python experiments/tables.py latent     --data_dir=../shared/data/tensorflow_datasets

reference:  the PyTorch reference's protocol (grayscale pixels, latent 64, beta 1, 20
            epochs, batch 256, Adam 1e-3): test negative ELBO next to its 101.75.
likelihood: dynamically binarized MNIST, trained with the ELBO and with the IWAE bound
            (k = 5 and 50) for --epochs each; NLL = -L_5000 on the first --num_test test
            images (the same images and draws for every model), next to Burda et al. 2016
            Table 1 (one stochastic layer, 3,280 passes: VAE 86.76, IWAE k=50 84.78).
latent:     the reference protocol at latent sizes 2 to 64: test negative ELBO, its
            terms and the active units.

Runs go to --workdir/<table>/<name>; a finished run is reused (delete it to retrain).
"""

import dataclasses
import json
import os
import statistics

from absl import app, flags

from vae_jax import bounds, data, parallel
from vae_jax.config import Config
from vae_jax.evaluate import evaluate_run
from vae_jax.models import posterior
from vae_jax.run import train_and_evaluate
from vae_jax.train import run_keys
from vae_jax.workdir import METRICS_FILE, PARAMS_FILE, load_model, read_metrics

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS or IDX folder; unset: TFDS's, else cache.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tables", "Where the runs go.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: per table).")
_NUM_TEST = flags.DEFINE_integer("num_test", 2000, "Test images for the NLL (likelihood).")
_NLL_SAMPLES = flags.DEFINE_integer("nll_samples", 5000, "k of the NLL estimate -L_k.")

REFERENCE_TEST_LOSS = 101.75  # seed_torch.py's docstring, epoch 20
BURDA_NLL = {"elbo": "86.76", "iwae5": "-", "iwae50": "84.78"}  # Table 1, one layer


def train(table: str, name: str, config: Config) -> tuple[Config, list[dict]]:
    """Trains `config` into --workdir/table/name, or reuses the run finished there."""
    workdir = os.path.join(_WORKDIR.value, table, name)
    config = dataclasses.replace(
        config, data_dir=_DATA_DIR.value, workdir=workdir, checkpoint_every=1000
    )
    if not os.path.isfile(os.path.join(workdir, PARAMS_FILE)):
        train_and_evaluate(config)
    return config, read_metrics(os.path.join(workdir, METRICS_FILE))


def reference_table():
    config, history = train("reference", "latent64", Config(epochs=_EPOCHS.value or 20))
    last = history[-1]
    print(f"\nreference protocol, {config.epochs} epochs, seed {config.seed}:")
    print("| | test negative ELBO | recon | KL | train loss | epoch time |")
    print("| --- | --- | --- | --- | --- | --- |")
    median_time = statistics.median(r["epoch_time_s"] for r in history[1:] or history)
    print(
        f"| vae_jax | {last['test_elbo']:.2f} | {last['test_recon']:.2f} | "
        f"{last['test_kl']:.2f} | {last['train_loss']:.2f} | {median_time:.2f} s |"
    )
    print(f"| PyTorch reference (its docstring) | {REFERENCE_TEST_LOSS} | | | | |")


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
    rows = []
    for name, config in runs.items():
        config, history = train("likelihood", name, config)
        model, params, _ = load_model(config.workdir)
        results = evaluate_run(
            model,
            params,
            test_images,
            run_keys(0).eval,  # The same draws for every model.
            (1, _NLL_SAMPLES.value),
            mesh=parallel.data_mesh(),
            show_progress=False,
        )
        rows.append((name, config, history, results))
        with open(os.path.join(config.workdir, "likelihood.json"), "w") as f:
            json.dump(results, f, indent=2)
    print(
        f"\ndynamically binarized MNIST, latent 64, {epochs} epochs each; -L_k on the first "
        f"{len(test_images)} test images (nats):"
    )
    print(
        f"| objective | -L_1 (ELBO) | NLL = -L_{_NLL_SAMPLES.value} | active units | train time | "
        "Burda et al. NLL (3,280 passes) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, config, history, results in rows:
        by_k = results["bounds"]
        label = "ELBO" if config.objective == "elbo" else f"IWAE, k = {config.num_samples}"
        nll = by_k[str(_NLL_SAMPLES.value)]
        train_time = sum(r["epoch_time_s"] for r in history)
        print(
            f"| {label} | {by_k['1']['neg_bound']:.2f} ± {by_k['1']['stderr']:.2f} | "
            f"{nll['neg_bound']:.2f} ± {nll['stderr']:.2f} | {results['active_units']}/64 | "
            f"{train_time:.0f} s | {BURDA_NLL[name]} |"
        )


def latent_table():
    dataset = data.load_dataset("mnist", _DATA_DIR.value)
    test_images = data.eval_inputs(dataset.test_images, "none")
    print_rows = []
    for latent in (2, 4, 8, 16, 32, 64):
        config, history = train(
            "latent", f"latent{latent}", Config(latent=latent, epochs=_EPOCHS.value or 20)
        )
        model, params, _ = load_model(config.workdir)
        mean, _ = posterior(model, params, test_images)
        last = history[-1]
        print_rows.append(
            f"| {latent} | {last['test_elbo']:.2f} | {last['test_recon']:.2f} | "
            f"{last['test_kl']:.2f} | {bounds.active_units(mean)}/{latent} |"
        )
    print(f"\nreference protocol at other latent sizes, {config.epochs} epochs each:")
    print("| latent | test negative ELBO | recon | KL | active units |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(print_rows))


TABLES = {"reference": reference_table, "likelihood": likelihood_table, "latent": latent_table}


def main(argv):
    if len(argv) != 2 or argv[1] not in TABLES:
        raise app.UsageError(f"name one table: {', '.join(TABLES)}")
    TABLES[argv[1]]()


if __name__ == "__main__":
    app.run(main)
