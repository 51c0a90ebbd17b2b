"""Packages are found, not listed (pyproject.toml holds everything else): every quantkit.* folder with an
__init__.py ships, so a new package cannot go missing from the wheel while an editable install hides it.
setuptools' `packages.find` cannot say this: it never finds the two data packages, whose import names
(`quantkit_calibration`, `quantkit_recipes`) differ from their folders (calibration/, recipes/)."""

from setuptools import find_packages, setup

DATA_PACKAGES = ["quantkit_calibration", "quantkit_recipes"]  # pyproject.toml's package-dir maps them to their folders


def packages(root: str = ".") -> list[str]:
    return [*find_packages(where=root, include=["quantkit", "quantkit.*"]), *DATA_PACKAGES]


if __name__ == "__main__":
    setup(packages=packages())
