"""vaekit/__init__.py: the small public API, loaded lazily but visible to dir() and help()."""

from __future__ import annotations

import pydoc
import subprocess
import sys

import vaekit


def test_all_names_the_lazy_api_and_each_resolves():
    assert set(vaekit.__all__) == set(vaekit._LAZY) | {"__version__"}
    for name in vaekit.__all__:
        assert getattr(vaekit, name) is not None


def test_dir_and_help_show_the_public_api():
    assert {"VAE", "load", "VAEModel", "RunConfig"} <= set(dir(vaekit))
    text = pydoc.render_doc(vaekit, renderer=pydoc.plaintext)
    assert "class VAE(" in text and "load(run_dir" in text


def test_importing_vaekit_loads_no_torch():
    """The CLI's --help starts fast because the package's import stops at this module."""
    code = "import sys, vaekit; dir(vaekit); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
