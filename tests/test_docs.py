"""Every code block of the README and docs/ runs as shown: a renamed function or flag
breaks this test, not a reader.

- A Python block runs by itself in a fresh interpreter from the repository root.
- A shell block runs in bash, in an empty folder, less its tagged lines: a command
  ending in a tag such as `# [CI]`, `# [full run]` or `# [GPU]` is one the tests do not
  run, and the tag says why (docs/testing.md).

Blocks run as on a user's machine after a first run: MNIST in the download cache, no
network, no TFDS data dir. Those that read MNIST take it from the full data
($VAE_JAX_SHARED_DATA); the others need nothing.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.S | re.M)
TAGS = ("[CI]", "[full run]", "[GPU]", "[TPU]", "[hosts]", "[server]")
TAG = re.compile(r"#\s*\[([^\]]+)\]")
READS_MNIST = re.compile(r"load_dataset|download\(|train_and_evaluate|vae_jax\.(main|evaluate)")


def untagged_commands(block: str) -> list[str]:
    lines = [line for line in block.splitlines() if line.strip()]
    return [line for line in lines if not TAG.search(line) and not line.startswith("#")]


def blocks(language: str, runnable_only: bool = False) -> list:
    found = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            if match.group(1) != language:
                continue
            if runnable_only and language == "sh" and not untagged_commands(match.group(2)):
                continue  # every command is tagged: nothing for a test to run
            found.append(pytest.param(match.group(2), id=f"{page.name}:{number}"))
    return found


@pytest.fixture(scope="session")
def cache_with_mnist(full_data, tmp_path_factory) -> pathlib.Path:
    """An XDG cache holding MNIST, as after a user's first run."""
    cache = tmp_path_factory.mktemp("xdg_cache")
    shutil.copytree(full_data / "mnist_idx", cache / "vae_jax" / "mnist")
    return cache


def run(args: list[str], cwd: pathlib.Path, cache: pathlib.Path | None, timeout: int):
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_the_docs_have_code_blocks():
    assert len(list(blocks("python"))) >= 6
    assert len(list(blocks("sh"))) >= 6


@pytest.mark.parametrize("block", blocks("sh"))
def test_every_shell_command_is_tested_or_tagged(block):
    for line in block.splitlines():
        tag = TAG.search(line)
        assert tag is None or f"[{tag.group(1).split(']')[0]}]" in TAGS, line


@pytest.mark.slow
@pytest.mark.parametrize("code", blocks("python"))
def test_python_block_runs(code, request, tmp_path):
    cache = request.getfixturevalue("cache_with_mnist") if READS_MNIST.search(code) else None
    run([sys.executable, "-c", code], tmp_path, cache, timeout=600)  # what it writes goes there


@pytest.mark.slow
@pytest.mark.parametrize("block", blocks("sh", runnable_only=True))
def test_shell_block_runs(block, cache_with_mnist, tmp_path):
    script = "\n".join(untagged_commands(block))
    run(["bash", "-euo", "pipefail", "-c", script], tmp_path, cache_with_mnist, 900)
