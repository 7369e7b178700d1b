"""Loading checkpoints back, shape for shape.

A checkpoint without `pruning_config.json` is whatever transformers loads, and is loaded by transformers itself. A
pruned one is built from its config on the meta device (no dense weights are allocated), reshaped from
`pruning_config.json`, then its weights are loaded strictly: every tensor must fit, except the legacy tensors and the
base-model prefix that transformers itself tolerates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from accelerate import init_empty_weights

from ..arch.registry import ADAPTERS
from ..core import AttentionSite, ConvSite, find_stacks, prepared_adapter, resolve_conv_sites, resolve_sites
from ..core.hidden import remove_hidden_channels, residual_stream
from ..core.record import ensure_record
from ..core.surgery import remove_channels, remove_heads, remove_layers, remove_neurons
from ..errors import CheckpointError
from .save import FORMAT_VERSION, PRUNING_CONFIG
from .weights import check_shapes, checkpoint_shapes, load_weights, match_keys


def local_directory(path_or_repo_id: str | os.PathLike, revision: str | None, token) -> Path:
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token))
    except Exception as error:  # network, auth, missing repo: one clear message naming the source
        raise CheckpointError(
            f"{path_or_repo_id!r} is not a local directory and could not be fetched from the Hub: {error}"
        ) from error


def _read_pruning_config(directory: Path) -> dict | None:
    path = directory / PRUNING_CONFIG
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version")
        raise CheckpointError(f"{path}: format_version {found!r}; this hfprune reads {FORMAT_VERSION}")
    for field in ("layers", "sites"):
        if not isinstance(data.get(field), dict):
            raise CheckpointError(f"{path}: field {field!r} must be an object")
    for name, entry in data["sites"].items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: sites.{name} must be an object")
        for key, value in entry.items():
            if key.startswith("num_") and not (isinstance(value, int) and value >= 0):
                raise CheckpointError(f"{path}: sites.{name}.{key} must be a non-negative integer, got {value!r}")
            if not key.startswith("num_") and not (isinstance(value, list) and all(isinstance(i, int) for i in value)):
                raise CheckpointError(f"{path}: sites.{name}.{key} must be a list of integers")
    for name, entry in data["layers"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("num_layers"), int)):
            raise CheckpointError(f"{path}: layers.{name}.num_layers must be an integer")
    if "hidden" in data:
        _check_hidden(data["hidden"], path)
    return data


def _check_hidden(entry, path: Path) -> None:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: field 'hidden' must be an object")
    for key in ("num_channels", "num_dense_channels"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{path}: hidden.{key} must be a positive integer, got {value!r}")
    if entry["num_channels"] > entry["num_dense_channels"]:
        raise CheckpointError(f"{path}: hidden.num_channels exceeds hidden.num_dense_channels")
    kept = entry.get("channels")
    if kept is not None and not (
        isinstance(kept, list) and len(kept) == entry["num_channels"] and all(isinstance(i, int) for i in kept)
    ):
        raise CheckpointError(f"{path}: hidden.channels must be a list of num_channels integers")


def _dense_hidden(config, spec: dict | None, source: Path) -> None:
    """Set `config`'s hidden size to the dense one a hidden-pruned checkpoint was cut from: the model is built at
    that size and narrowed by `_reshape`, since families like BERT derive their head size from the hidden size and
    cannot build the narrow stream from config.json."""
    if spec is None or "hidden" not in spec:
        return
    adapter = ADAPTERS.get(config.model_type)
    if adapter is None or adapter.hidden is None:
        raise CheckpointError(f"{source}: records hidden-size pruning, which a {config.model_type!r} model cannot have")
    setattr(config, adapter.hidden.size_field, spec["hidden"]["num_dense_channels"])


def _reshape(model: nn.Module, spec: dict, source: Path) -> None:
    """Shrink a freshly built (meta) model to the sizes in `spec`. Which indices go does not matter: the
    weights loaded next carry the values."""
    for stack in find_stacks(model):
        wanted = spec["layers"].get(stack.spec.name, {}).get("num_layers", len(stack.layers))
        if wanted > len(stack.layers):
            raise CheckpointError(
                f"{source}: layers.{stack.spec.name}.num_layers is {wanted} but config.json builds {len(stack.layers)}"
            )
        remove_layers(model, [f"{stack.spec.name}.{i}" for i in range(wanted, len(stack.layers))])
    all_sites = {**resolve_sites(model), **resolve_conv_sites(model)}
    unknown = sorted(set(spec["sites"]) - set(all_sites))
    if unknown:
        raise CheckpointError(
            f"{source}: sites {unknown} do not exist in a {model.config.model_type} model built from config.json"
        )
    heads, neurons, channels = {}, {}, {}
    for name, entry in spec["sites"].items():
        site = all_sites[name]
        if isinstance(site, AttentionSite):
            heads[name] = _heads_to_remove(site, entry, source)
        elif isinstance(site, ConvSite):
            # config.json's conv_dim already builds pruned channel counts; this only checks they agree.
            channels[name] = _trailing(source, name, "channels", entry, site.num_channels, minimum=1)
        else:
            neurons[name] = _trailing(source, name, "neurons", entry, site.num_neurons, minimum=0)
    remove_heads(model, heads)
    remove_neurons(model, neurons)
    remove_channels(model, channels)
    if "hidden" in spec:
        wanted, built = spec["hidden"]["num_channels"], residual_stream(model).width
        if wanted > built:
            raise CheckpointError(f"{source}: hidden.num_channels is {wanted} but config.json builds {built}")
        remove_hidden_channels(model, keep=range(wanted))  # which channels does not matter: the weights carry them


def _trailing(source: Path, name: str, unit: str, entry: dict, built: int, minimum: int) -> range:
    """The units beyond the recorded count: which ones go does not matter, the weights carry the values."""
    wanted = entry.get(f"num_{unit}", built)
    if wanted > built or wanted < minimum:
        raise CheckpointError(
            f"{source}: sites.{name}.num_{unit} is {wanted}, but config.json builds {built} and at least "
            f"{minimum} must stay"
        )
    return range(wanted, built)


def _heads_to_remove(site: AttentionSite, entry: dict, source: Path) -> list[int]:
    heads, kv_heads = entry.get("num_heads", site.num_heads), entry.get("num_kv_heads", site.num_kv_heads)
    if heads > site.num_heads or kv_heads > site.num_kv_heads or (heads and (not kv_heads or heads % kv_heads)):
        raise CheckpointError(
            f"{source}: sites.{site.name} asks for {heads} heads over {kv_heads} KV heads, which a site with "
            f"{site.num_heads} heads over {site.num_kv_heads} KV heads cannot become"
        )
    if heads == site.num_heads:
        return []
    kept = entry.get("heads")
    if kept is not None and len(kept) == heads and all(0 <= h < site.num_heads for h in kept):
        # The dense site was built: remove what was removed, so head identity (WavLM's head_index) is restored.
        return [h for h in range(site.num_heads) if h not in set(kept)]
    group = site.num_heads // site.num_kv_heads
    per_group = heads // kv_heads if kv_heads else 0
    return [h for h in range(site.num_heads) if h // group >= kv_heads or h % group >= per_group]


def _model_class(config, model_class):
    if model_class is not None and hasattr(model_class, "_model_mapping"):
        # An Auto class (AutoModelForSequenceClassification, ...): the concrete class for this config.
        try:
            return model_class._model_mapping[type(config)]
        except KeyError:
            raise CheckpointError(
                f"{model_class.__name__} has no model for config {type(config).__name__} ({config.model_type!r})"
            ) from None
    if model_class is not None:
        return model_class
    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise CheckpointError(f"config.json names no transformers architecture ({architectures}); pass model_class=")
    return cls


def _empty_model(cls: type, config) -> nn.Module:
    """`cls` built from `config` with its parameters on the meta device: shapes without memory, nor weights read."""
    with init_empty_weights(include_buffers=False):
        return cls._from_config(config)


def _attach_record(model: nn.Module, spec: dict) -> None:
    """The pruning record of `pruning_config.json` on `model`, so that a later save keeps it."""
    record = ensure_record(model)
    record.heads = {n: e["heads"] for n, e in spec["sites"].items() if "heads" in e}
    record.kv_heads = {n: e["kv_heads"] for n, e in spec["sites"].items() if "kv_heads" in e}
    record.neurons = {n: e["neurons"] for n, e in spec["sites"].items() if "neurons" in e}
    record.channels = {n: e["channels"] for n, e in spec["sites"].items() if "channels" in e}
    record.layers = {n: e["kept"] for n, e in spec["layers"].items() if "kept" in e}
    record.dense = {
        n: {k[len("num_dense_"):]: v for k, v in e.items() if k.startswith("num_dense_")}
        for n, e in spec["sites"].items()
        if any(k.startswith("num_dense_") for k in e)
    }
    if "hidden" in spec:
        record.dense_hidden = spec["hidden"]["num_dense_channels"]
        record.hidden = spec["hidden"].get("channels", list(range(spec["hidden"]["num_channels"])))
    record.recipe, record.report = spec.get("recipe"), spec.get("report")


def _load_with_transformers(cls: type, directory: Path) -> nn.Module:
    """A checkpoint without `pruning_config.json`, loaded by transformers itself: whatever quirks it accepts (legacy
    buffers, a base model's keys, `.bin` weights, its default dtype), hfprune accepts the same way."""
    try:
        return cls.from_pretrained(directory)
    except Exception as error:  # OSError, ValueError, RuntimeError, safetensors' own: one message naming the folder
        _explain_shape_mismatch(cls, directory)
        raise CheckpointError(f"{directory}: transformers could not load it as {cls.__name__}: {error}") from error


def _explain_shape_mismatch(cls: type, directory: Path) -> None:
    """Name the first tensor whose shape the config does not build, if that is why loading failed: transformers
    only says "look at the report". Usually a pruned checkpoint that lost its `pruning_config.json`."""
    try:
        shapes = checkpoint_shapes(directory)
    except CheckpointError:
        return  # not (only) safetensors: transformers' own message stands
    model = _empty_model(cls, transformers.AutoConfig.from_pretrained(directory))
    targets, _ = match_keys(model, shapes)
    check_shapes(model, shapes, targets, f"the model config.json describes (is {PRUNING_CONFIG} missing?)")


def empty_model(directory: Path, model_class: type | None = None) -> nn.Module:
    """The model a local checkpoint directory holds, built to its (pruned) shapes on the meta device, with its
    pruning record attached: no weight is read. Buffers that checkpoints do not hold (rotary frequencies) are real
    tensors on the CPU, so a part of the model loaded later (`hfprune.checkpoint.stream`) runs as it is."""
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory} has no config.json")
    config = transformers.AutoConfig.from_pretrained(directory)
    spec = _read_pruning_config(directory)
    _dense_hidden(config, spec, directory / PRUNING_CONFIG)
    model = _empty_model(_model_class(config, model_class), config)
    prepared_adapter(model)
    if spec is not None:
        _reshape(model, spec, directory / PRUNING_CONFIG)
        _attach_record(model, spec)
    return model


def from_pretrained(
    path_or_repo_id: str | os.PathLike,
    model_class: type | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load any checkpoint saved by hfprune (pruned or not), from a local directory or a Hub repo id.

    A checkpoint without `pruning_config.json` (any plain transformers checkpoint, a sentence-transformers folder
    among them) is loaded by `model_class.from_pretrained` itself, so it loads exactly as transformers loads it: same
    dtype, same legacy tensors ignored, same task head initialized. A pruned one is built from its config on the meta
    device, reshaped from `pruning_config.json` and loaded strictly, in the dtype it was saved in: a tensor the
    model lacks, or one of the wrong shape, is an error, except the legacy buffers and the base-model prefix
    (`bert.`, `model.`) that transformers tolerates.

    Args:
        path_or_repo_id: local directory or Hub repository id.
        model_class: the transformers class to build, or an Auto class (`AutoModelForCausalLM`, ...); defaults
            to `config.architectures[0]`.
        revision, token: passed to the Hub download when `path_or_repo_id` is a repo id.
        device: where to put the model (default: CPU). `"meta"` builds the pruned shapes without reading the
            weights: enough for `hfprune.count` and reports, at no memory cost.

    Returns:
        The model in eval mode, with the pruning record attached (so a later save keeps it).

    Example:
        ```python
        >>> model = hfprune.from_pretrained("out/bert-pruned")
        ```
    """
    if not isinstance(path_or_repo_id, str | os.PathLike):
        raise CheckpointError(
            f"path_or_repo_id must be a directory or Hub repo id, got {path_or_repo_id!r}; the model class goes "
            "second: hfprune.from_pretrained(path, AutoModelForSequenceClassification)"
        )
    directory = local_directory(path_or_repo_id, revision, token)
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory} has no config.json")
    config = transformers.AutoConfig.from_pretrained(directory)
    if not (directory / PRUNING_CONFIG).exists() and str(device) != "meta":
        model = _load_with_transformers(_model_class(config, model_class), directory)
        prepared_adapter(model)
    else:
        model = empty_model(directory, model_class)
        if str(device) != "meta":
            load_weights(model, directory)
        else:
            model.tie_weights()  # so shared embeddings count once, as they do in the loaded model
    if (directory / "generation_config.json").exists() and hasattr(model, "generation_config"):
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory)
    return model.to(device or "cpu").eval()
