"""Saving pruned models: a standard transformers directory plus `pruning_config.json`, written atomically.

A checkpoint is a standard transformers directory (safetensors + config.json, updated wherever the family's
config can express the new shapes) plus `pruning_config.json` for what it cannot: per-site kept heads and
neurons, and kept layers, with their original indices.

This is the one place that saves. A model gains a pruning record at its first surgery; from then on its own
`model.save_pretrained(...)` (and so the Trainer's checkpoints) comes here, so the record is never lost.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.nn as nn
from accelerate import init_empty_weights

from ..core import AttentionSite, ConvSite, find_stacks, resolve_conv_sites, resolve_sites
from ..core.hidden import residual_stream
from ..core.record import PruningRecord, get_record, on_new_record
from ..version import __version__

PRUNING_CONFIG = "pruning_config.json"
FORMAT_VERSION = 1



def pruning_config(model: nn.Module) -> dict:
    """The content of pruning_config.json for `model`: every site's size, and original indices where known."""
    record = get_record(model) or PruningRecord()
    sites = {}
    transformer = resolve_sites(model)
    for name, site in {**resolve_conv_sites(model), **transformer}.items():
        if isinstance(site, ConvSite):
            entry = {"num_channels": site.num_channels}
            tables = (("channels", record.channels, site.num_channels),)
        elif isinstance(site, AttentionSite):
            entry = {"num_heads": site.num_heads, "num_kv_heads": site.num_kv_heads}
            tables = (("heads", record.heads, site.num_heads), ("kv_heads", record.kv_heads, site.num_kv_heads))
        else:
            entry = {"num_neurons": site.num_neurons}
            tables = (("neurons", record.neurons, site.num_neurons),)
        for key, table, size in tables:
            if name in table and len(table[name]) == size:
                entry[key] = table[name]
            if key in record.dense.get(name, {}):
                entry[f"num_dense_{key}"] = record.dense[name][key]
        sites[name] = entry
    layers = {}
    for stack in find_stacks(model):
        entry = {"num_layers": len(stack.layers)}
        if len(record.layers.get(stack.spec.name, ())) == len(stack.layers):
            entry["kept"] = record.layers[stack.spec.name]
        layers[stack.spec.name] = entry
    config = {
        "format_version": FORMAT_VERSION,
        "hfprune_version": __version__,
        "model_type": model.config.model_type,
        "layers": layers,
        "sites": sites,
        "recipe": record.recipe,
        "report": record.report,
    }
    if record.dense_hidden is not None:
        config["hidden"] = _hidden_entry(model, record)
    return config


def _hidden_entry(model: nn.Module, record: PruningRecord) -> dict:
    """The hidden size now and before pruning (the loader builds the dense size and narrows it: families like BERT
    cannot build a narrower stream from config.json), with the kept original channels where known."""
    width = residual_stream(model).width
    entry = {"num_channels": width, "num_dense_channels": record.dense_hidden}
    if record.hidden is not None and len(record.hidden) == width:
        entry["channels"] = record.hidden
    return entry


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> None:
    """Save a (pruned) model so that `hfprune.from_pretrained` rebuilds it exactly.

    The save is atomic: everything is written to a temporary sibling directory first and moved into place only
    once complete, so a crash mid-save leaves the previous checkpoint intact. Other files already in
    `save_directory` (a tokenizer, say) are kept. `model.save_pretrained(...)` on a pruned model comes here.

    Args:
        model: the model to save.
        save_directory: target directory, created if needed.
        kwargs: passed to transformers' `save_pretrained` (e.g. `max_shard_size`).
    """
    with staged(save_directory) as staging:
        type(model).save_pretrained(model, staging, **kwargs)  # the class method: the instance one leads here
        if get_record(model) is not None:
            (staging / PRUNING_CONFIG).write_text(json.dumps(pruning_config(model), indent=1))


@contextmanager
def staged(save_directory: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `save_directory` to write a checkpoint into, moved into place when the `with` block
    ends without error (stale weights and pruning metadata of a checkpoint already there removed, its other files
    kept), and removed in every case: a failure leaves `save_directory` as it was."""
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.hfprune-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def loads_without_hfprune(model: nn.Module) -> bool:
    """Whether a checkpoint of `model` loads with plain `AutoModel*.from_pretrained`, without hfprune.

    True when the model that transformers builds from `model.config` alone has exactly the parameters and buffers
    of `model`, name for name and shape for shape: the config expresses every pruned shape (uniform GQA pruning
    of Llama-family models, a uniform FFN width, removed layers), so `pruning_config.json` is only a record.

    Args:
        model: a (pruned) model.

    Returns:
        `bool`.
    """
    with init_empty_weights(include_buffers=False):
        plain = type(model)._from_config(copy.deepcopy(model.config))
    ours, theirs = model.state_dict(), plain.state_dict()
    return ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)


def _move_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    new_files = {p.name for p in staging.iterdir()}
    # Weights and pruning metadata of the checkpoint being replaced must not outlive it: stale shards or a
    # stale pruning_config.json would be read back with the new weights.
    for old in target.iterdir():
        stale_weights = old.name.startswith("model") and old.suffix in (".safetensors", ".json", ".bin")
        if old.name not in new_files and (stale_weights or old.name == PRUNING_CONFIG):
            old.unlink()
    for name in sorted(new_files, key=lambda n: n == "config.json"):  # config last: it marks completion
        os.replace(staging / name, target / name)


def _save_through_hfprune(model: nn.Module) -> None:
    """Make `model.save_pretrained(...)` write the pruning record too: called when a model gets its record."""

    def _save_pretrained(self, save_directory, **kwargs):
        return save_pretrained(self, save_directory, **kwargs)

    model.save_pretrained = types.MethodType(_save_pretrained, model)


on_new_record(_save_through_hfprune)
