"""The linter CI runs (ruff, a test dependency, configured in pyproject.toml): pyflakes, pycodestyle and bugbear
findings fail the build."""

import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "quantkit", "tests", "benchmarks", "calibration",
                           "--output-format", "concise"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
