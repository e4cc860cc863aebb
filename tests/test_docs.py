"""The documentation runs: every ```python block of each page in docs/ is executed, in order,
in one namespace per page (so a page reads like a notebook), inside a scratch directory; every
line of a ```bash block that starts with ``vaekit`` runs through the CLI there too. The site
builds with mkdocs in strict mode (a broken link or a page missing from the nav fails)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
PAGES = sorted(DOCS.glob("*.md"))


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text())]


def test_every_page_is_collected():
    names = {p.name for p in PAGES}
    assert {"index.md", "architecture.md", "amortized.md", "training.md", "road.md", "generative.md"} <= names
    assert sum(lang == "python" for p in PAGES for lang, _ in blocks(p)) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_code_blocks_run(page, tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from vaekit.cli import main

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, (lang, code) in enumerate(blocks(page)):
        where = f"{page.name}, block {i + 1}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)
            continue
        for line in code.splitlines():
            if line.startswith("vaekit "):
                argv = shlex.split(line.split(" #")[0])[1:]
                assert main(argv) == 0, f"{where}: {line}"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """README's ```python blocks run as written (each in its own namespace), with a table of
    random values standing in for the reader's my_table.npy."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.save("my_table.npy", np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32))
    python = [code for lang, code in blocks(ROOT / "README.md") if lang == "python"]
    assert len(python) >= 2
    for i, code in enumerate(python):
        namespace: dict = {"__name__": "readme"}
        exec(compile(code, f"README.md, python block {i + 1}", "exec"), namespace)
    assert namespace["Z"].shape == (1797, 2)
    assert (tmp_path / "runs" / "mine" / "config.json").is_file()


def test_site_builds(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_reference_lists_every_option_of_every_verb():
    """docs/reference.md's options section is what the parser gives (regenerate it with
    vaekit.cli.write_options_reference), and names every flag of every verb."""
    import argparse

    from vaekit.cli import OPTIONS_MARKERS, build_parser, options_reference

    start, end = OPTIONS_MARKERS
    page = (DOCS / "reference.md").read_text()
    assert page.split(start, 1)[1].split(end, 1)[0].strip() == options_reference().strip(), (
        'docs/reference.md is out of date: python -c "from vaekit.cli import write_options_reference; write_options_reference()"'
    )
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb, parser in sub.choices.items():
        section = options_reference().split(f"### vaekit {verb}\n", 1)[1].split("### vaekit ", 1)[0]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (verb, flag)


def test_estimator_parameters_are_the_documented_options():
    """Every parameter of vaekit.VAE is a `vaekit train` option with `_` for `-`, or one of the
    estimator's own, as README and the reference say."""
    import inspect

    import vaekit
    from vaekit.cli import build_parser

    flags = {o for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions for o in a.option_strings}
    own = {"image_shape", "scaling", "progress", "verbose"}
    for name in inspect.signature(vaekit.VAE).parameters:
        assert name in own or "--" + name.replace("_", "-") in flags, name
