"""vaekit.launch: a process's rank and world size, read without importing torch."""

import subprocess
import sys
import types

from vaekit import launch


def test_rank_and_world_come_from_torchrun_before_the_group_forms(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch.launched_rank_world() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert launch.launched_rank_world() == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")  # a group of one is no group: its RANK is not asked
    assert launch.launched_rank_world() == (0, 1)


def test_a_half_imported_torch_distributed_means_no_group(monkeypatch):
    """A signal that stopped torch.distributed's own import leaves a module without its
    functions in sys.modules: no group can have been joined through it."""
    monkeypatch.setitem(sys.modules, "torch.distributed", types.ModuleType("torch.distributed"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launch.rank_world() == (0, 1)
    assert launch.launched_rank_world() == (1, 2)


def test_a_joined_group_is_asked(monkeypatch):
    group = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_rank=lambda: 3, get_world_size=lambda: 4)
    monkeypatch.setitem(sys.modules, "torch.distributed", group)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.rank_world() == launch.launched_rank_world() == (3, 4)


def test_asking_imports_no_torch():
    code = "import sys, vaekit.launch as l; l.launched_rank_world(); l.rank_world(); assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
