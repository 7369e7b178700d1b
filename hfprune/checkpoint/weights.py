"""Reading a pruned checkpoint's weights into a model built to its shapes: strictly (every tensor must fit and
every parameter must be filled), except for what transformers itself tolerates: legacy tensors (old
`position_ids` buffers, `_keys_to_ignore_on_load_unexpected`), a missing or extra base-model prefix, the task
head of a checkpoint loaded into its base model, and a new task head on a base checkpoint (initialized as
transformers would, with a warning)."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, KeysView
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

from ..errors import CheckpointError
from .save import PRUNING_CONFIG

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_Shapes = dict[str, tuple[str, tuple[int, ...]]]  # checkpoint key -> (file name, shape)


def weight_files(directory: Path) -> list[Path]:
    single, index = (directory / name for name in _WEIGHT_FILES)
    if single.exists():
        return [single]
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise CheckpointError(f"{index} is malformed: {error}") from error
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{directory}: weight shards listed in {index.name} are missing: {missing}")
        return [directory / s for s in shards]
    raise CheckpointError(f"{directory} has no weights: expected {' or '.join(_WEIGHT_FILES)}")


def load_weights(model: nn.Module, directory: Path) -> None:
    shapes = checkpoint_shapes(directory)
    targets, unexpected = match_keys(model, shapes)
    check_shapes(model, shapes, targets, f"the model described by config.json and {PRUNING_CONFIG}")
    if unexpected:
        raise CheckpointError(f"{directory}: the weights hold tensors the model does not have: {unexpected[:8]}")
    loaded: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        try:
            with safe_open(str(file), framework="pt") as reader:
                for key in reader.keys():
                    if key in targets:
                        loaded[targets[key]] = reader.get_tensor(key)
        except Exception as error:
            raise CheckpointError(f"{file} could not be read as safetensors: {error}") from error
    model.load_state_dict(loaded, strict=False, assign=True)
    model.tie_weights()
    still_empty = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    new_head = _new_head(model, targets, still_empty)
    if new_head != still_empty:
        raise CheckpointError(f"{directory}: the weights lack tensors the model needs: {still_empty[:8]}")
    if new_head:
        _initialize(model, new_head)
        warnings.warn(
            f"{directory} holds a base model without the task head of {type(model).__name__}: {new_head[:8]} are "
            "newly initialized, as transformers initializes them",
            stacklevel=3,
        )


def checkpoint_shapes(directory: Path) -> _Shapes:
    """Every tensor's file and shape, from the safetensors headers alone (no tensor is read)."""
    shapes = {}
    for file in weight_files(directory):
        try:
            with safe_open(str(file), framework="pt") as reader:
                for key in reader.keys():
                    shapes[key] = (file.name, tuple(reader.get_slice(key).get_shape()))
        except Exception as error:  # safetensors raises its own error type for a corrupt header
            raise CheckpointError(f"{file} could not be read as safetensors: {error}") from error
    return shapes


def _prefix(model: nn.Module) -> str | None:
    """The base model's prefix in a task model's keys (`"bert."`), or None for a class without one."""
    return f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else None


def match_keys(model: nn.Module, keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The model tensor each checkpoint tensor loads into, matched as transformers matches them, and the checkpoint
    tensors that load nowhere and that transformers would not drop either (sorted).

    A task model's checkpoint loaded into its base model (`bert.encoder...` into `BertModel`) leaves its task head
    out, as transformers does; a base model's checkpoint (a sentence-transformers folder) loads into a task model by
    adding the prefix."""
    expected, prefix = model.state_dict().keys(), _prefix(model)
    legacy = _legacy_keys(model)
    targets = {key: target for key in keys if (target := _model_key(key, expected, prefix)) is not None}
    # Stripping the prefix means the checkpoint is of a task model: what lies outside its base model is its head.
    stripped = prefix is not None and any(target != key and key.startswith(prefix) for key, target in targets.items())
    unexpected = [
        key
        for key in keys
        if key not in targets
        and not (legacy is not None and legacy.search(key))
        and not (stripped and not key.startswith(prefix))
    ]
    return targets, sorted(unexpected)


def _model_key(key: str, expected: KeysView[str], prefix: str | None) -> str | None:
    """`key` as the model names it: as is, else without the base-model prefix (a task model's checkpoint loaded into
    its base model), else with it (a base model's checkpoint loaded into a task model), as transformers renames it."""
    if key in expected:
        return key
    if prefix is not None and key.startswith(prefix) and key[len(prefix):] in expected:
        return key[len(prefix):]
    if prefix is not None and prefix + key in expected:
        return prefix + key
    return None


def _legacy_keys(model: nn.Module) -> re.Pattern | None:
    """The checkpoint tensors transformers drops without a word (`_adjust_missing_and_unexpected_keys`): those the
    model class lists in `_keys_to_ignore_on_load_unexpected` (regexes, gathered from its submodules by `post_init`),
    and the `position_ids` / `rotary_emb.inv_freq` buffers that older transformers saved and now are non-persistent
    (the all-MiniLM-L6-v2 checkpoint, for one, still holds `embeddings.position_ids`)."""
    patterns = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in model.named_buffers()]
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        patterns.add(r"(^|\.)position_ids$")
    return re.compile("|".join(f"({pattern})" for pattern in sorted(patterns))) if patterns else None


def check_shapes(model: nn.Module, shapes: _Shapes, targets: dict[str, str], described_by: str) -> None:
    expected = model.state_dict()
    for key, target in targets.items():
        (file, found), needed = shapes[key], tuple(expected[target].shape)
        if found != needed:
            raise CheckpointError(f"{file}: tensor {key} has shape {found} but {described_by} needs {needed}")


def _new_head(model: nn.Module, targets: dict[str, str], still_empty: list[str]) -> list[str]:
    """The still-empty tensors that are the task head of a model loaded from its base model's checkpoint (whole
    modules outside the base model): transformers initializes those. Any other missing tensor means an incomplete
    checkpoint."""
    prefix = _prefix(model)
    if prefix is None or not any(target == prefix + key for key, target in targets.items()):
        return []

    def module_is_new(name: str) -> bool:
        # A module the checkpoint filled in part is not a new head: initializing it would overwrite loaded values.
        return all(p.is_meta for p in model.get_submodule(name.rpartition(".")[0]).parameters(recurse=False))

    parameters = dict(model.named_parameters())
    return [n for n in still_empty if n in parameters and not n.startswith(prefix) and module_is_new(n)]


@torch.no_grad()
def _initialize(model: nn.Module, names: list[str]) -> None:
    """Give the modules holding the parameters `names` (a new task head) the model's own transformers
    initialization."""
    for module_name in sorted({name.rpartition(".")[0] for name in names}):
        module = model.get_submodule(module_name)
        for name, parameter in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty_like(parameter, device="cpu"), parameter.requires_grad))
        model._init_weights(module)
