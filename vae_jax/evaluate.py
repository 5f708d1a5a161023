"""Evaluation command: the test ELBO, importance-weighted bounds and NLL, diagnostics.

    python -m vae_jax.evaluate --workdir=W [--num_samples=1,50,5000]

loads a run's model and parameters (`vae_jax.load_model`), scores the test set with
`vae_jax.bounds` over every device, with the run's likelihood, in float32 whatever the
run's --dtype and with every matmul at HIGHEST precision whatever the device's default
(`vae_jax.precision`), writes `eval.json` and the pictures to W and prints a table.
Every number is in nats per image and carries its standard error over images. The bounds
are scored in 20 parts, each saved to W/eval_partial.npz as it finishes: a stopped
evaluation (Ctrl-C, a time limit) resumes from there when run again.
"""

from vae_jax.errors import require_command_extra

require_command_extra("python -m vae_jax.evaluate", as_command=__name__ == "__main__")

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from flax import serialization

from vae_jax import bounds, cli, data, folders, parallel, plots, precision, pretrained, workdir
from vae_jax.divergences import aggregate_information
from vae_jax.errors import InputError
from vae_jax.models import posterior_gaussians, with_dtype
from vae_jax.objective import Objective
from vae_jax.train import run_keys

EVAL_FILE = "eval.json"
PARTIAL_FILE = "eval_partial.npz"  # the bounds scored so far, while an evaluation runs
NUM_PARTS = 20  # of the test images, each a compiled call and a save of PARTIAL_FILE
# I(x; z) and TC(z) are of these first test images' aggregate posterior: their n^2 pairs
# take 0.3 s for 1,000 images and 26 s for 10,000 on 2 CPU cores.
INFORMATION_IMAGES = 2000
# --params: which of a run's parameter files to score.
PARAMS_FILES = {"final": workdir.PARAMS_FILE, "best": workdir.BEST_PARAMS_FILE}


def evaluate_run(
    model,
    params,
    test_images: np.ndarray,
    key: jax.Array,
    sample_counts: Sequence[int] = (1, 50, 5000),
    *,
    objective: Objective = Objective(),
    mesh: jax.sharding.Mesh | None = None,
    show_progress: bool = True,
    partial_path: str | None = None,
) -> dict:
    """Bounds -L_k for each k, the NLL estimate (largest k), the gap and diagnostics.

    The model is scored with its own likelihood, in float32 (`models.with_dtype`), at
    full precision. `objective`: only its deprecated `reconstruction` is used. `mesh`:
    split the images over its devices. The diagnostics are those of the posterior
    means, layer by layer from the data up (`layers`), and concatenated.

    With `show_progress` or `partial_path`, the images are scored in `NUM_PARTS` parts
    (a bar advances with each). `partial_path`: a file (`PARTIAL_FILE`) where each part is
    saved as it finishes, and whose parts are not scored again when it holds the same
    model, parameters, images and key; the numbers are the same either way. Ignored in a
    multi-process run, whose processes must make the same calls.
    """
    model = with_dtype(model, jnp.float32)
    if jax.process_count() > 1:
        partial_path = None
    # Hashing the parameters and images is work only a file needs.
    partial = PartialBounds(
        partial_path, fingerprint(model, params, test_images, key) if partial_path else ""
    )
    if mesh is not None:
        params = parallel.put_replicated(params, mesh)
    results: dict = {"num_images": len(test_images), "bounds": {}}
    for num_samples in sorted(sample_counts):
        neg_bound = negative_bound_in_parts(
            functools.partial(
                bounds.estimate_negative_bound,
                model,
                params,
                key=jax.random.fold_in(key, num_samples),
                num_samples=num_samples,
                objective=objective,
                mesh=mesh,
            ),
            test_images,
            partial,
            f"-L_{num_samples}",
            NUM_PARTS if show_progress or partial_path else 1,
        )
        value, stderr = bounds.mean_and_stderr(neg_bound)
        # time_s: a resumed evaluation's earlier parts included.
        seconds = partial.time_s(f"-L_{num_samples}")
        results["bounds"][str(num_samples)] = dict(neg_bound=value, stderr=stderr, time_s=seconds)
    results.update(_nll_of(results["bounds"]))
    # fold_in(key, 0): no bound's key (those are fold_in(key, k), k >= 1).
    diagnostics = latent_diagnostics(model, params, test_images, jax.random.fold_in(key, 0))
    return {**results, **diagnostics}


def _nll_of(neg_bounds: dict) -> dict:
    """The NLL estimate (the largest k's bound), and the ELBO's gap to it when k = 1 is there."""
    largest = max(neg_bounds, key=int)
    nll = {
        "nll": neg_bounds[largest]["neg_bound"],
        "nll_stderr": neg_bounds[largest]["stderr"],
        "nll_num_samples": int(largest),
    }
    if "1" in neg_bounds and int(largest) > 1:  # k = 1 alone estimates no NLL
        nll["elbo_nll_gap"] = neg_bounds["1"]["neg_bound"] - nll["nll"]
    return nll


def fingerprint(model, params, images: np.ndarray, key: jax.Array) -> str:
    """A digest of what fixes an evaluation's numbers: the model, its parameters, the
    images and the key."""
    digest = hashlib.sha256(repr(model).encode())
    digest.update(serialization.to_bytes(params))
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.asarray(jax.random.key_data(key)).tobytes())
    return digest.hexdigest()


class PartialBounds:
    """-L_k of the images scored so far, one [num_images] array a bound (NaN where not
    yet scored), and the seconds spent on each, kept in the file `path` (None: in memory
    only). A file made for another fingerprint is ignored, and replaced at the first save."""

    _SECONDS = "seconds:"  # the prefix of a bound's time in the file

    def __init__(self, path: str | None, fingerprint: str):
        self.path, self.fingerprint, self.bounds, self.seconds = path, fingerprint, {}, {}
        if path and os.path.isfile(path):
            with np.load(path) as saved:
                if str(saved["fingerprint"]) == fingerprint:
                    for key in saved.files:
                        if key.startswith(self._SECONDS):
                            self.seconds[key.removeprefix(self._SECONDS)] = float(saved[key])
                        elif key != "fingerprint":
                            self.bounds[key] = saved[key]

    def of(self, name: str, num_images: int) -> np.ndarray:
        return self.bounds.setdefault(name, np.full(num_images, np.nan))

    def time_s(self, name: str) -> float:
        """The seconds spent scoring bound `name`, over every call that scored a part."""
        return self.seconds.get(name, 0.0)

    def add_time(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.time_s(name) + seconds

    def save(self) -> None:
        if self.path is None:
            return
        partial = f"{self.path}.tmp.npz"  # np.savez adds .npz to a name without it
        seconds = {self._SECONDS + name: value for name, value in self.seconds.items()}
        np.savez(partial, fingerprint=self.fingerprint, **self.bounds, **seconds)
        os.replace(partial, self.path)  # a stop mid-write leaves the last whole file


def negative_bound_in_parts(
    score, images: np.ndarray, partial: PartialBounds, name: str, num_parts: int
) -> np.ndarray:
    """`score(images, image_ids=...)` -> -L_k, over `num_parts` equal parts of `images`
    (the last padded, so one program serves all), each saved to `partial` when done; the
    parts already there are not scored again."""
    neg_bound = partial.of(name, len(images))
    part = -(-len(images) // num_parts)
    todo = [s for s in range(0, len(images), part) if np.isnan(neg_bound[s : s + part]).any()]
    scored = int(np.sum(~np.isnan(neg_bound)))
    if scored:
        print(f"{name}: {scored} of {len(images)} images scored before, read from {partial.path}")
    padding = -len(images) % part
    padded = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    bar = bounds.progress_bar(len(images), name, "image", None if num_parts > 1 else True)
    with bar as bar:
        bar.update(scored)
        for start in todo:
            began = time.perf_counter()
            stop = min(start + part, len(images))
            ids = np.arange(start, start + part)
            neg_bound[start:stop] = score(padded[start : start + part], image_ids=ids)[
                : stop - start
            ]
            partial.add_time(name, time.perf_counter() - began)
            partial.save()
            bar.update(stop - start)
    return neg_bound


def latent_diagnostics(model, params, images, key: jax.Array | None = None) -> dict:
    """The posterior means' activity and KL per dimension, layer by layer (`layers`) and
    for all layers together, with the count of active units; with `key`, the mutual
    information I(x; z) and the total correlation of z under the aggregate posterior of
    the first `INFORMATION_IMAGES` images (`divergences.aggregate_information`, one draw
    of `key` per image), in nats: I(x; z) is then at most log 2000 = 7.6.

    Those two are of the posterior's top Gaussian layer, which q draws from x alone
    (`information_of` names it): z of a one-layer model, the top z_L of a hierarchy, and
    for a flow the Gaussian z_0 it starts from. A flow is one bijection for every image,
    so I(x; z) = I(x; z_0); its total correlation is z_0's.
    """
    gaussians = jax.device_get(posterior_gaussians(model, params, images))
    layers = [
        {
            "latent": int(mean.shape[-1]),
            "active_units": bounds.active_units(mean),
            "unit_activity": [float(v) for v in bounds.unit_activity(mean)],
            # KL to N(0, 1) per dimension: the KL to the prior for the standard prior only.
            "kl_to_standard_normal_per_dim": [
                float(v) for v in bounds.kl_per_dimension(mean, logvar)
            ],
        }
        for mean, logvar in gaussians
    ]
    diagnostics = {
        "layers": layers,
        "unit_activity": sum((layer["unit_activity"] for layer in layers), []),
        "kl_per_dim": sum((layer["kl_to_standard_normal_per_dim"] for layer in layers), []),
        "active_units": sum(layer["active_units"] for layer in layers),
        "latent": sum(model.latent_sizes),
    }
    if key is not None:
        mean, logvar = (jnp.asarray(v)[:INFORMATION_IMAGES] for v in gaussians[-1])
        z = mean + jax.random.normal(key, mean.shape) * jnp.exp(0.5 * logvar)
        information, correlation = aggregate_information(z, mean, logvar)
        top = "z" if len(gaussians) == 1 else f"z_{len(gaussians)}"
        flowing = getattr(model, "flow", None) is not None
        diagnostics.update(
            mutual_information=float(information),
            total_correlation=float(correlation),
            information_of="z_0, the Gaussian the flow starts from" if flowing else top,
            information_num_images=int(mean.shape[0]),
        )
    return diagnostics


def write_pictures(
    model,
    params,
    test_images,
    test_labels,
    image_shape,
    activity,
    history,
    workdir,
    spherical: bool,
) -> list[str]:
    """The evaluation pictures, as PNG files in `workdir`; returns their names.

    `activity` is each latent dimension's `unit_activity`: traversals show the highest.
    """

    def path(name):
        return os.path.join(workdir, name)

    written = []
    num_pairs = min(8, len(test_images) // 2)  # rows of interpolations: none for one image
    if num_pairs:
        plots.save_interpolations(
            model,
            params,
            test_images[:num_pairs],
            test_images[num_pairs : 2 * num_pairs],
            image_shape,
            path("interpolations.png"),
            spherical=spherical,
        )
        written.append("interpolations.png")
    written += ["traversals.png", "latent_scatter.png"]
    most_active = [int(d) for d in np.argsort(-np.asarray(activity))[:8]]
    plots.save_traversals(
        model, params, test_images[0], most_active, image_shape, path("traversals.png")
    )
    plots.save_latent_scatter(
        model, params, test_images[:5000], test_labels[:5000], path("latent_scatter.png")
    )
    if tuple(model.latent_sizes) == (2,):
        plots.save_manifold(model, params, image_shape, path("manifold.png"))
        written.append("manifold.png")
    if history:
        plots.save_training_curves(history, path("training_curves.png"))
        written.append("training_curves.png")
    return written


def format_table(results: dict, protocol: dict) -> str:
    """The short table printed by the command."""
    lines = [
        f"{protocol['dataset']}, binarization={protocol['binarization']}, "
        f"{protocol['reconstruction']} likelihood; nats/image over {results['num_images']} "
        "test images (+- standard error)"
    ]
    for k, bound in results["bounds"].items():
        # The largest k estimates the NLL; a single k = 1 is the ELBO, no NLL estimate.
        names = {str(results["nll_num_samples"]): f"-L_{k} (NLL)", "1": "-L_1 (ELBO)"}
        name = names.get(k, f"-L_{k}")
        lines.append(
            f"  {name:<16} {bound['neg_bound']:9.3f} +- {bound['stderr']:.3f}"
            f"   ({bound['time_s']:.1f} s)"
        )
    if "elbo_nll_gap" in results:
        lines.append(f"  {'ELBO - NLL gap':<16} {results['elbo_nll_gap']:9.3f}")
    lines.append(f"  {'active units':<16} {results['active_units']:>5} / {results['latent']}")
    if "mutual_information" in results:
        of = results["information_of"].split(",")[0]
        lines.append(f"  {f'I(x; {of})':<16} {results['mutual_information']:9.3f}")
        lines.append(f"  {f'TC({of})':<16} {results['total_correlation']:9.3f}")
    if len(results["layers"]) > 1:
        for number, layer in enumerate(results["layers"], 1):
            name = f"  of layer z_{number}"
            lines.append(f"  {name:<16} {layer['active_units']:>5} / {layer['latent']}")
    return "\n".join(lines)


def main(argv) -> None:
    del argv  # cli.parse_flags refused any argument that is not a flag
    absl_logging.set_verbosity(absl_logging.WARNING)  # INFO logs off the console, as in main
    flag_values = flags.FLAGS
    try:
        sample_counts = sorted({int(k) for k in flag_values.num_samples})
        if not sample_counts or sample_counts[0] < 1:
            raise ValueError
    except ValueError:
        cli.fail(
            f"--num_samples must be positive integers, got {','.join(flag_values.num_samples)}"
        )
    if flag_values.num_images < 0:
        cli.fail(f"--num_images must be >= 0 (0 = all), got {flag_values.num_images}")
    folder = flag_values.workdir
    # Every number and picture of the command at full float32 precision, whatever the
    # device's default or $JAX_DEFAULT_MATMUL_PRECISION.
    with precision.scoring():
        try:
            with folders.removed_unless_used(folder):  # --pretrained's, if it fails
                model, params, config, which_params = _model_to_score(flag_values)
                with workdir.lock(folder):
                    evaluate_workdir(
                        folder,
                        model,
                        params,
                        config,
                        sample_counts,
                        which_params=which_params,
                        data_dir=flag_values.data_dir or config.data_dir,
                        num_images=flag_values.num_images,
                        spherical=flag_values.spherical,
                    )
        except InputError as e:
            cli.fail(str(e))
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: the parts of the bounds that finished are in "
                f"{os.path.join(folder, PARTIAL_FILE)}; the same command resumes from them",
                file=sys.stderr,
            )
            sys.exit(130)


def _model_to_score(flag_values) -> tuple:
    """(model, params, config, which_params) of --pretrained, or of the run in --workdir.

    A shipped model is scored into --workdir, which is made for it: a folder holding a
    run of its own is refused, so that no run's eval.json is replaced.
    """
    folder, name = flag_values.workdir, flag_values.pretrained
    if not name:
        run = workdir.load_model(folder, PARAMS_FILES[flag_values.params])
        return run.model, run.params, run.config, flag_values.params
    if flag_values["params"].present:
        raise InputError("--params picks a run's parameter file; leave it out with --pretrained")
    run = pretrained.load(name)
    if os.path.exists(os.path.join(folder, workdir.CONFIG_FILE)):
        raise InputError(
            f"--workdir={folder} holds a trained run; name a new folder for the evaluation of "
            f"--pretrained={name}"
        )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"--workdir={folder} cannot be made ({e.strerror}); choose another"
        ) from None
    return run.model, run.params, run.config, f"pretrained:{name}"


def evaluate_workdir(
    folder,
    model,
    params,
    config,
    sample_counts,
    *,
    which_params="final",
    data_dir,
    num_images,
    spherical,
) -> dict:
    """Scores a run's model on its test set; writes eval.json and the pictures to `folder`."""
    dataset, test_images, test_labels = _test_set(config, data_dir, num_images)
    protocol = run_protocol(config, which_params)
    partial_path = os.path.join(folder, PARTIAL_FILE)
    results = evaluate_run(
        model,
        params,
        test_images,
        run_keys(config.seed).eval,
        sample_counts,
        mesh=parallel.data_mesh(),
        partial_path=partial_path,
    )
    results["protocol"] = protocol
    if results["active_units"] < results["latent"] / 2:
        results["collapse_warning"] = True
        print(
            f"warning: only {results['active_units']} of {results['latent']} latent units are "
            "active: most have collapsed to the prior",
            file=sys.stderr,
        )
    history = workdir.read_metrics(os.path.join(folder, workdir.METRICS_FILE))
    results["pictures"] = write_pictures(
        with_dtype(model, jnp.float32),
        params,
        test_images,
        test_labels,
        dataset.image_shape,
        results["unit_activity"],
        history,
        folder,
        spherical,
    )
    with open(os.path.join(folder, EVAL_FILE), "w") as f:
        json.dump(results, f, indent=2)
    if os.path.exists(partial_path):
        os.remove(partial_path)  # eval.json holds the numbers now
    print(format_table(results, protocol))
    print(f"wrote {EVAL_FILE} and {', '.join(results['pictures'])} to {folder}")
    return results


def _test_set(config, data_dir, num_images: int):
    """(dataset, the first `num_images` test inputs (0: all) and their labels) of a run."""
    # Only the test split is used: read one training image, not all of them.
    dataset = data.load_dataset(
        config.dataset, data_dir, num_train=1, allow_download=config.download
    )
    test_images = data.eval_inputs(dataset.test_images, config.binarization)
    if num_images > len(test_images):
        raise InputError(
            f"--num_images={num_images} exceeds the {len(test_images)} test images of "
            f"{config.dataset}; pass at most {len(test_images)}, or 0 for all"
        )
    count = num_images or len(test_images)
    return dataset, test_images[:count], dataset.test_labels[:count]


def run_protocol(config, which_params: str) -> dict:
    """What eval.json stamps on its numbers; notes on stderr when they are no likelihood."""
    protocol = {
        "dataset": config.dataset,
        "binarization": config.binarization,
        "reconstruction": config.reconstruction,
        "true_likelihood": config.binarization != "none" or config.reconstruction != "bernoulli",
        "params": which_params,  # final, or best: chosen on held-out training images
    }
    if not protocol["true_likelihood"]:
        print(
            "note: a Bernoulli likelihood of grayscale pixels is not a likelihood of the "
            "images; train with --binarization=dynamic for an NLL to quote",
            file=sys.stderr,
        )
    return protocol


def define_flags() -> None:
    flags.DEFINE_string(
        "workdir",
        None,
        "A finished run's folder (from vae_jax.main); with --pretrained, the folder that "
        "receives the evaluation.",
        required=True,
    )
    flags.DEFINE_string(
        "pretrained",
        None,
        f"Score a shipped model instead of a run: {', '.join(pretrained.names())} "
        "(docs/pretrained.md). At its card's settings (all test images, "
        "--num_samples=1,50,5000) the numbers are its card's.",
    )
    flags.DEFINE_list(
        "num_samples",
        ["1", "50", "5000"],
        "Values of k for -L_k; the largest gives the NLL estimate.",
    )
    flags.DEFINE_string("data_dir", None, "Override the run's --data_dir.")
    flags.DEFINE_enum(
        "params",
        "final",
        list(PARAMS_FILES),
        "final: the last epoch's parameters; best: those of the best validation ELBO "
        "(a run trained with --num_valid).",
    )
    flags.DEFINE_integer("num_images", 0, "Evaluate the first N test images only; 0 = all.")
    flags.DEFINE_bool("spherical", False, "Interpolate spherically (slerp) instead of linearly.")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
