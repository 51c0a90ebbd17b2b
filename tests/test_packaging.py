"""The wheel ships every package: setup.py finds them (a hand-kept list once left new packages out of the
wheel while the editable install hid it), and each data package's folder and files are where pyproject says."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO
from setuptools.config.pyprojecttoml import load_file  # tomllib only from Python 3.11

pytestmark = pytest.mark.unit


def setup_module_of(root):
    spec = importlib.util.spec_from_file_location("quantkit_setup", root / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


def setuptools_config() -> dict:
    return load_file(REPO / "pyproject.toml")["tool"]["setuptools"]


def test_every_quantkit_package_is_in_the_wheel():
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "quantkit").rglob("__init__.py")}
    shipped = setup_module_of(REPO).packages(str(REPO))
    assert folders - set(shipped) == set(), "packages the wheel would miss"
    assert "packages" not in setuptools_config(), "pyproject.toml lists packages by hand again: setup.py finds them"


def test_a_new_package_is_found_without_an_edit(tmp_path):
    for folder in ("quantkit", "quantkit/added", "quantkit/added/deeper"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    found = setup_module_of(REPO).packages(str(tmp_path))
    assert sorted(found) == ["quantkit", "quantkit.added", "quantkit.added.deeper", "quantkit_calibration", "quantkit_recipes"]


def test_data_packages_map_to_their_folders_and_their_files_exist():
    config = setuptools_config()
    setup = setup_module_of(REPO)
    assert set(config["package-dir"]) == set(setup.DATA_PACKAGES)
    for package, patterns in config["package-data"].items():
        folder = REPO / config["package-dir"].get(package, package.replace(".", "/"))
        assert (folder / "__init__.py").is_file(), package
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: nothing matches {pattern!r}"
