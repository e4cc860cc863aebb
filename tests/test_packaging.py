"""What the distributions carry: the wheel holds the package (and its licence), the source
distribution also holds everything its own test suite reads. Both are built from a copy of the
tracked tree with setuptools' PEP 517 backend, as ``python -m build`` would."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    """The project's files: git's list in a checkout, else (an unpacked sdist) the tree less
    what Python and setuptools write into it."""
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        return [p for p in out.stdout.decode().split("\0") if p]
    written = ("__pycache__", ".egg-info", ".pytest_cache", "PKG-INFO", ".pyc", "setup.cfg")
    return [
        str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
        if p.is_file() and not any(w in part for part in p.relative_to(ROOT).parts for w in written)
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[str]]:
    files = tracked_files()
    src = tmp_path_factory.mktemp("tree")
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    # The backend rewrites sys.argv while it runs: the directory is read from it first.
    code = "import sys; from setuptools import build_meta as b; d = sys.argv[1]; b.build_sdist(d); b.build_wheel(d)"
    out = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return dist, files


def test_sdist_carries_the_test_suite_and_what_it_reads(built):
    dist, files = built
    (sdist,) = dist.glob("vaekit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        top, *_ = tar.getnames()[0].split("/")
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = [f for f in files if f.split("/")[0] in {"src", "tests", "docs", "bench"}]
    wanted += ["README.md", "LICENSE", "mkdocs.yml", "pyproject.toml"]
    missing = sorted(set(wanted) - names)
    assert not missing, f"left out of {sdist.name}: {missing[:10]}"
    assert "tests/conftest.py" in names and "tests/cli_helpers.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_holds_the_package_and_its_licence_only(built):
    dist, files = built
    (wheel,) = dist.glob("vaekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {f.removeprefix("src/") for f in files if f.startswith("src/vaekit/") and f.endswith(".py")}
    assert modules <= set(names), sorted(modules - set(names))[:10]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names[-10:]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    assert not any(n.startswith(("tests/", "docs/", "bench/")) for n in names)
