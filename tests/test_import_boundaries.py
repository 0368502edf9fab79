"""``facetrack`` and ``evaluation`` never import ``ray``: every module is imported in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Imports every module of the named packages, in order, and reports which one first brought in `ray`.
# A module may be skipped only when its ImportError names a third-party module (an optional extra).
_PROBE = r"""
import importlib, json, pkgutil, sys

def third_party(missing, roots):
    return missing.split(".")[0] not in roots

roots = sys.argv[1:]
report = {"imported": [], "skipped": [], "failed": [], "absent": [], "ray_from": []}
for root in roots:
    try:
        package = importlib.import_module(root)
    except ModuleNotFoundError as exc:
        if exc.name == root:
            report["absent"].append(root)
            continue
        raise
    names = [root]
    if hasattr(package, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, root + ".", onerror=lambda _: None)]
    for name in names:
        had_ray = "ray" in sys.modules
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if exc.name and third_party(exc.name, roots):
                report["skipped"].append([name, exc.name])
            else:
                report["failed"].append([name, repr(exc)])
        except Exception as exc:
            report["failed"].append([name, repr(exc)])
        else:
            report["imported"].append(name)
        if "ray" in sys.modules and not had_ray:
            report["ray_from"].append(name)
print(json.dumps(report))
"""


def probe(*roots: str, path: Path = REPO) -> dict:
    """Run the import probe over ``roots`` in a fresh interpreter with ``path`` first on sys.path."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *roots],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_clean_env(), "PYTHONPATH": str(path)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_library_packages_do_not_import_ray() -> None:
    report = probe("facetrack", "evaluation")
    assert report["failed"] == [], report["failed"]
    assert report["ray_from"] == [], f"these modules import ray: {report['ray_from']}"
    expected = {"facetrack", "facetrack.storage", "facetrack.types", "facetrack.config"}
    assert expected <= set(report["imported"])
    assert "facetrack" not in report["absent"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray installed to see it imported")
def test_probe_catches_a_ray_import(tmp_path: Path) -> None:
    package = tmp_path / "probe_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""probe."""\n')
    (package / "clean.py").write_text('"""clean."""\nimport json\n')
    (package / "sub" / "__init__.py").write_text('"""sub."""\n')
    (package / "sub" / "uses_ray.py").write_text('"""bad."""\nimport ray\n')
    (package / "needs_extra.py").write_text('"""optional."""\nimport surely_not_installed_pkg\n')
    (package / "broken.py").write_text('"""broken."""\nfrom probe_pkg import does_not_exist\n')
    report = probe("probe_pkg", path=tmp_path)
    assert report["ray_from"] == ["probe_pkg.sub.uses_ray"]
    assert report["skipped"] == [["probe_pkg.needs_extra", "surely_not_installed_pkg"]]
    assert [name for name, _ in report["failed"]] == ["probe_pkg.broken"]
    assert "probe_pkg.clean" in report["imported"]
