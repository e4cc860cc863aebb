"""The helpers in tests/ (``cli_helpers``, ``train_helpers``) importable from every test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
