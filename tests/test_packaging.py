"""The package layout: one installed top-level package, every subpackage listed in pyproject."""

from __future__ import annotations

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed_under_graphnn() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(config["packages"]), config["package-dir"]
    assert all(p == "graphnn" or p.startswith("graphnn.") for p in listed)
    assert dirs == {"graphnn": "graphnn", "graphnn.passes": "passes",
                    "graphnn.backends": "backends"}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"packages on disk but not in pyproject: {found - listed}"


def test_passes_and_backends_import_as_graphnn_subpackages() -> None:
    import graphnn.backends
    import graphnn.passes

    assert pathlib.Path(graphnn.backends.__file__).parent == ROOT / "backends"
    assert pathlib.Path(graphnn.passes.__file__).parent == ROOT / "passes"
    assert graphnn.__version__
