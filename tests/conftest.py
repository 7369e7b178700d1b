"""Tests import the benchmark helpers in scripts/ (fortunes, peer_torch_pruning) as plain modules."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
