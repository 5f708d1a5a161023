"""Every Python block of the docs runs as shown, by itself, in a fresh interpreter from the
repository root: a renamed function breaks this test, not a reader."""

import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks():
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            yield pytest.param(match.group(1), id=f"{page.name}:{number}")


def test_the_docs_have_python_blocks():
    assert len(list(python_blocks())) >= 3


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs(code, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
