"""Checkpoints: saving pruned models (atomically, with `pruning_config.json` for the shapes the config cannot
express) and loading them back, shape for shape, from a directory or the Hub; reading and writing them one block at a
time for models larger than memory (`stream.py`); exporting them to GGUF for llama.cpp."""

from .gguf_export import ExportError, export_gguf
from .load import from_pretrained, local_directory
from .save import PRUNING_CONFIG, loads_without_hfprune, pruning_config, save_pretrained

__all__ = ["PRUNING_CONFIG", "ExportError", "export_gguf", "from_pretrained", "loads_without_hfprune",
           "local_directory", "pruning_config", "save_pretrained"]
