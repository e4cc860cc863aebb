"""How this process was launched: its rank and world size in a torchrun group.

Read from what is already there (a torch.distributed already imported, the environment
torchrun sets), never by importing torch: a verb asks while it handles Ctrl-C or SIGTERM, which
may arrive while torch is still being imported, and importing a half-initialised torch again
fails with a traceback instead of the verb's one line."""

from __future__ import annotations

import os
import sys


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group this process has joined; (0, 1) when none."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group can have been joined
    # Without its functions it was stopped while being imported: no group yet either.
    available, initialized = (getattr(dist, name, None) for name in ("is_available", "is_initialized"))
    if available is not None and initialized is not None and available() and initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: the group's once joined, else as torchrun launched
    it (RANK, WORLD_SIZE), known before it joins; (0, 1) when not launched by torchrun."""
    if rank_world() != (0, 1):
        return rank_world()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)
