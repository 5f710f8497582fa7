"""Package metadata (issue 11, item 17) and a light ``import lightning_green`` (item 18)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import lightning_green

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


def _requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): r for r in reqs}


def _third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in the package (module level or inside functions)."""
    names: set[str] = set()
    for path in (ROOT / "lightning_green").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "lightning_green"}


# Imported only behind an ImportError guard or by an optional integration.
OPTIONAL = {"psutil", "transformers", "onnx", "onnxruntime", "onnxscript"}


def test_every_third_party_import_is_declared():
    declared = set(_requirements())
    for extra in PROJECT.get("optional-dependencies", {}).values():
        declared |= {re.sub(r"[-_.]+", "-", Requirement(r).name).lower() for r in extra}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module in _third_party_imports() - OPTIONAL:
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_jsonargparse_floor_is_what_lightnings_cli_needs():
    from lightning.pytorch import cli

    needed = cli._JSONARGPARSE_SIGNATURES_AVAILABLE.requirement  # e.g. "jsonargparse[signatures]>=4.27.7"
    needed_floor = Version(re.search(r">=\s*([\d.]+)", needed).group(1))
    req = _requirements()["jsonargparse"]
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert floors and floors[0] >= needed_floor, (req, needed)
    assert "signatures" in req.extras


def test_license_is_spdx_with_the_tracked_apache_text():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "LICENSE"], cwd=ROOT, capture_output=True, check=False
    )
    if tracked.returncode not in (0, 1):  # pragma: no cover - not a git checkout (sdist)
        pytest.skip("not a git checkout")
    assert tracked.returncode == 0, "LICENSE is not tracked by git"
    # PEP 639 metadata needs setuptools >= 77 at build time.
    build_req = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = next(r for r in build_req if r.name == "setuptools")
    assert setuptools.specifier.contains("77") and not setuptools.specifier.contains("76.9")


def test_typed_single_version_and_classifiers():
    assert (ROOT / "lightning_green" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["lightning_green"]
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lightning_green.__version__"}
    Version(lightning_green.__version__)
    classifiers = PROJECT["classifiers"]
    assert not any(c.startswith("Framework :: Pytest") for c in classifiers)
    floor = Version(PROJECT["requires-python"].removeprefix(">="))
    pattern = r"Programming Language :: Python :: 3\.\d+"
    versions = [c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(pattern, c)]
    assert versions and min(Version(v) for v in versions) == floor
    # No [project.urls] until the project has a public repository: an invented address misleads packagers.
    assert all("lightning-green/lightning-green" not in u for u in PROJECT.get("urls", {}).values())


def _imported_after(code: str) -> set[str]:
    probe = (
        f"import sys\n{code}\n"
        "print(' '.join(m for m in ('pandas', 'sklearn', 'zeus.monitor', 'zeus.optimizer.power_limit', "
        "'transformers', 'onnx', 'onnxruntime', 'resource', 'lightning', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=240
    ).stdout
    return set(out.split())


def test_import_lightning_green_is_light():
    loaded = _imported_after("import lightning_green")
    assert not loaded, f"`import lightning_green` imported {sorted(loaded)}"


def test_callbacks_do_not_pull_zeus_monitor_or_pandas():
    loaded = _imported_after("from lightning_green import EnergyMonitor, PowerLimitTuner, GreenReport")
    assert not loaded & {"pandas", "sklearn", "zeus.monitor", "zeus.optimizer.power_limit", "resource"}, loaded


def test_lazy_names_resolve_and_unknown_names_fail():
    for name in lightning_green.__all__:
        assert getattr(lightning_green, name) is not None
    assert set(lightning_green.__all__) <= set(dir(lightning_green))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        lightning_green.Nope  # noqa: B018
