"""The package as a researcher imports it: light, with one default per setting."""

import importlib
import importlib.metadata as metadata
import inspect
import pathlib
import pkgutil
import subprocess
import sys
import tomllib

import pytest

import vae_jax
from vae_jax.losses import DEFAULT_SCALE

HEAVY = ("orbax", "tensorstore", "matplotlib", "tensorflow_datasets")


def test_import_vae_jax_loads_the_maths_only():
    code = (
        "import sys, vae_jax\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "vae_jax.train_and_evaluate\n"  # lazy: importable on first use
        "print('orbax' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split("\n")[:2] == ["[]", "True"]


REPO = pathlib.Path(__file__).resolve().parents[1]
# Hides the [all] extra's packages from a fresh interpreter: a core install, in effect.
WITHOUT_EXTRA = """
import sys
BLOCKED = {"tensorflow_datasets", "array_record", "matplotlib", "tqdm"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_the_core_install_is_the_maths_alone():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {requirement.split(">")[0].split("=")[0] for requirement in project["dependencies"]}
    assert core == {"jax", "flax", "optax", "numpy"}
    extra = " ".join(project["optional-dependencies"]["all"])
    assert "tensorflow-datasets" in extra and "matplotlib" in extra


def test_a_train_step_and_a_bound_run_without_the_extra():
    code = WITHOUT_EXTRA + (
        "import jax, jax.numpy as jnp, numpy as np, optax, vae_jax\n"
        "from vae_jax import bounds\n"
        "model = vae_jax.VAE(latent=4, hidden_sizes=(16,))\n"
        "state = vae_jax.create_train_state(model, jax.random.key(0), optax.adam(1e-3))\n"
        "x = jax.random.bernoulli(jax.random.key(1), 0.3, (8, 784)).astype(jnp.float32)\n"
        "state, metrics = vae_jax.train_step(state, x, jax.random.key(2))\n"
        "nll = bounds.estimate_negative_bound(model, state.params, np.asarray(x), "
        "jax.random.key(3), 10, progress=True)\n"
        "print(np.isfinite(float(metrics['loss'])), np.isfinite(nll).all())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True"]


def _run_without(blocked: set[str], code: str, cwd=REPO):
    """`code` in a fresh interpreter where the modules `blocked` cannot be imported."""
    hide = WITHOUT_EXTRA.replace(
        'BLOCKED = {"tensorflow_datasets", "array_record", "matplotlib", "tqdm"}',
        f"BLOCKED = {sorted(blocked)!r}",
    )
    return subprocess.run(
        [sys.executable, "-c", hide + code], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _command(module: str, *flags: str) -> str:
    """Code that runs `python -m module flags...`."""
    return (
        f"import runpy, sys; sys.argv = {[module, *flags]!r}; "
        f"runpy.run_module({module!r}, run_name='__main__')"
    )


def test_the_commands_name_the_missing_extra_in_one_line():
    for command in ("vae_jax.main", "vae_jax.evaluate"):
        result = _run_without({"tensorflow_datasets", "matplotlib", "tqdm"}, _command(command))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert "pip install 'vae_jax[all]'" in result.stderr
        assert "matplotlib" in result.stderr and "tqdm" in result.stderr
        assert "tensorflow_datasets" not in result.stderr  # only a TFDS data dir needs it


@pytest.mark.slow
def test_the_command_runs_on_the_idx_files_without_tfds_or_tensorboardx(
    idx_dir, tfds_dir, tmp_path
):
    # The [all] extra less tensorflow-datasets, array-record and tensorboardX, as one GPU
    # image had it: IDX files and no TensorBoard files need none of them.
    absent = {"tensorflow_datasets", "array_record", "tensorboardX"}
    run = ["--num_train=256", "--batch_size=128", "--epochs=1", "--latent=2", "--hidden_sizes=16"]
    where = [f"--data_dir={idx_dir}", f"--workdir={tmp_path / 'w'}"]
    result = _run_without(absent, _command("vae_jax.main", *run, *where, "--notensorboard"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "w" / "params.msgpack").exists()
    # What needs them says so in one line, before any work: TensorBoard files ...
    result = _run_without(
        absent, _command("vae_jax.main", *run, *where[:1], f"--workdir={tmp_path / 't'}")
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pass --notensorboard" in result.stderr and not (tmp_path / "t").exists()
    # ... and a TFDS data dir.
    tfds_run = [*run, f"--data_dir={tfds_dir}", f"--workdir={tmp_path / 't'}", "--notensorboard"]
    result = _run_without(absent, _command("vae_jax.main", *tfds_run))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "needs tensorflow-datasets" in result.stderr and "IDX files" in result.stderr


def test_train_and_evaluate_refuses_at_once_on_the_core_install(idx_dir, tmp_path):
    code = (
        "import vae_jax\n"
        f"config = vae_jax.Config(data_dir={str(idx_dir)!r}, workdir={str(tmp_path / 'w')!r})\n"
        "try:\n"
        "    vae_jax.train_and_evaluate(config)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    result = _run_without({"matplotlib", "tqdm", "tensorflow_datasets", "array_record"}, code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("vae_jax.train_and_evaluate needs the [all] extra")
    assert "matplotlib" in result.stdout and not (tmp_path / "w").exists()


def _public_functions():
    for module_info in pkgutil.iter_modules(vae_jax.__path__):
        if module_info.name == "main":
            continue  # defines absl flags on import
        module = importlib.import_module(f"vae_jax.{module_info.name}")
        for name, member in vars(module).items():
            if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(member):
                yield f"{module.__name__}.{name}", member
                for method_name, method in vars(member).items():
                    if inspect.isfunction(method) and not method_name.startswith("_"):
                        yield f"{module.__name__}.{name}.{method_name}", method
            elif callable(member):
                yield f"{module.__name__}.{name}", member


def test_one_likelihood_scale_default_everywhere():
    defaults = {}
    for name, function in _public_functions():
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            continue
        for parameter in parameters.values():
            if parameter.name in ("scale", "recon_scale"):
                defaults[f"{name}({parameter.name})"] = parameter.default
    # The Gaussian and Laplace losses, their dispatcher and the ELBO; the likelihoods
    # Gaussian and Laplace, `named` and `resolve`; Objective and Config. (The IWAE bound
    # takes the likelihood's values, not its parameters.)
    assert len(defaults) == 10, defaults
    assert set(defaults.values()) == {DEFAULT_SCALE}, defaults


def test_the_lowest_pins_are_the_oldest_versions_ci_tests():
    """pyproject's lower bounds are .ci/oldest.txt's versions, which CI installs and tests,
    and requires-python is what the oldest of them require (jax 0.7 needs Python 3.11)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["all"]
    lowest = {}
    for requirement in requirements:
        name, bounds = requirement.split(">=", 1)
        lowest[name.strip()] = bounds.split(",")[0].strip()
    oldest = {}
    for line in (REPO / ".ci" / "oldest.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            oldest[name] = version
    for name, version in oldest.items():
        if name != "jaxlib":  # jax pins its jaxlib
            assert lowest[name] in (version, version.rsplit(".", 1)[0]), (name, lowest[name])
    floor = project["requires-python"]
    assert floor == ">=3.11"
    for name in ("jax", "flax", "orbax-checkpoint"):  # as installed: the oldest, in CI's venv
        theirs = metadata.metadata(name)["Requires-Python"].replace(" ", "")
        assert tuple(map(int, theirs.removeprefix(">=").split("."))) <= (3, 11), (name, theirs)
