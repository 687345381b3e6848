"""The versions every certa output records, so a number can be traced to the software that made it."""

from __future__ import annotations

import importlib.metadata
import platform

#: (key in the output, distribution name) of the packages that shape results.
_PACKAGES = (("certa", "certa"), ("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
             ("accelerate", "accelerate"), ("numpy", "numpy"), ("sklearn", "scikit-learn"))


def package_versions() -> dict[str, str | None]:
    """Python's version and each package's (``None`` when it is not installed).

    Read from package metadata, so nothing heavy (torch) is imported.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _PACKAGES:
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def certa_version() -> str:
    """The installed certa version (``"unknown"`` when run from a source tree without metadata)."""
    try:
        return importlib.metadata.version("certa")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
