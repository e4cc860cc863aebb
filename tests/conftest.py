"""The helpers in tests/ (``cli_helpers``, ``train_helpers``) importable from every test folder,
and the cores shared fairly among pytest-xdist's workers."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Under ``pytest -n N`` every worker would start as many intra-op threads as the machine has
# cores, N times too many: OpenMP's threads then wait on each other and every product slows.
# Each worker takes its share of the cores instead, and the processes the tests start inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
