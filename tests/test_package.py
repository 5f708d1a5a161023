"""The package as a researcher imports it: light, with one default per setting."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

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
    # Gaussian, Laplace and their dispatcher; both bounds; Objective and Config.
    assert len(defaults) == 7, defaults
    assert set(defaults.values()) == {DEFAULT_SCALE}, defaults
