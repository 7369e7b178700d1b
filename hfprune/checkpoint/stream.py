"""A checkpoint read and written one part at a time, for models larger than memory.

`CheckpointParts` builds the model a checkpoint holds on the meta device (shapes only: `load.empty_model`),
checks every tensor of its safetensors files (one file, or the shards that model.safetensors.index.json lists)
against it from their headers alone, then reads the tensors of one module at a time (`load`) and hands the
module back to the meta device when done with it (`release`), freeing its memory. Tensors are read with plain file
reads into their own memory (`safetensors_io`), never by mapping a file: a process allowed less memory than one
shard can still read it.

`ShardWriter` writes the tensors of one part at a time as a safetensors shard into a staging directory and, once
every part is in, the shard index, config.json and pruning_config.json, then moves the directory into place as
`save_pretrained` does (`save.staged`): the result is a normal sharded checkpoint that `hfprune.from_pretrained`
(and, where the config expresses every shape, plain transformers) loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
from pathlib import Path

import torch
import torch.nn as nn

from ..core.record import get_record
from ..errors import CheckpointError
from .load import empty_model
from .safetensors_io import read_header, read_tensors, write_file
from .save import PRUNING_CONFIG, pruning_config
from .weights import check_shapes, match_keys, weight_files


class CheckpointParts:
    """The model of the checkpoint in `directory`, on the meta device, with its tensors read on demand.

    Args:
        directory: a local checkpoint directory (safetensors weights, one file or sharded).
        model_class: the transformers class to build; defaults to `config.architectures[0]`.
        device: where loaded tensors go (default: CPU).

    Raises:
        `CheckpointError` when the directory has no config or weights, a file is not complete safetensors, or a
        tensor is missing, extra or of another shape than the model built from the config needs: before any
        tensor is read.
    """

    def __init__(self, directory: Path, model_class: type | None = None, device: str | torch.device | None = None):
        self.directory, self.device = directory, torch.device(device or "cpu")
        self.model = empty_model(directory, model_class)
        self.model.tie_weights()  # a tied LM head is the embedding's weight, which the checkpoint holds once
        for module in self.model.modules():  # buffers no checkpoint holds (rotary frequencies) are built on the CPU
            for name, buffer in module._buffers.items():
                if buffer is not None and not buffer.is_meta:
                    module._buffers[name] = buffer.to(self.device)
        self.headers = {file: read_header(file) for file in weight_files(directory)}
        files = {key: file for file, header in self.headers.items() for key in header}
        shapes = {key: (file.name, self.headers[file][key].shape) for key, file in files.items()}
        targets, unexpected = match_keys(self.model, shapes)
        check_shapes(self.model, shapes, targets, "the model its config.json describes")
        if unexpected:
            raise CheckpointError(f"{directory}: the weights hold tensors the model does not have: {unexpected[:8]}")
        # model tensor name -> (file, checkpoint tensor name)
        self.sources = {target: (files[key], key) for key, target in targets.items()}
        missing = [name for name in self._tensor_names() if name not in self.sources]
        if missing:
            raise CheckpointError(f"{directory}: the weights lack tensors the model needs: {missing[:8]}")

    def _tensor_names(self) -> list[str]:
        """The model's saved tensors, one name per tensor: of tied parameters (an LM head sharing the embedding's
        weight) only the first, which is what checkpoints hold."""
        names, seen = [], set()
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                names.append(name)
        return names

    def load(self, module_path: str = "", skip: str | None = None) -> None:
        """Read every tensor of the module at `module_path` (`""`: the whole model) except those under the module
        path `skip`, onto `device`. Tied parameters are tied again afterwards."""
        prefix = f"{module_path}." if module_path else ""
        wanted = [n for n in self.sources if n.startswith(prefix) and not (skip and n.startswith(f"{skip}."))]
        by_file: dict[Path, list[str]] = {}
        for name in wanted:
            by_file.setdefault(self.sources[name][0], []).append(name)
        loaded = {}
        for file, names in by_file.items():
            tensors = read_tensors(file, self.headers[file], [self.sources[name][1] for name in names])
            for name in names:
                loaded[name] = tensors.pop(self.sources[name][1]).to(self.device)
        self.model.load_state_dict(loaded, strict=False, assign=True)
        if not module_path:
            self.model.tie_weights()

    def release(self, module_path: str) -> None:
        """Hand the module at `module_path` back to the meta device (its shapes stay, its memory is freed)."""
        self.model.get_submodule(module_path).to("meta")
        _return_freed_memory()


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Give the heap memory freed with a block back to the OS. glibc keeps freed chunks smaller than its adaptive
    mmap threshold in the heap, where the next block's differently sized tensors fragment it: a Wanda pass over 12
    blocks of 8.6 MB grew the resident memory by ~5 MB per block without this, though no tensor outlived its
    block; with it, it stayed flat."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class ShardWriter:
    """Writes a checkpoint part by part (one safetensors shard each) into `staging`; `finish` completes it.

    Args:
        staging: the directory to write into (created; see `save.staged` for moving it into place).
    """

    def __init__(self, staging: Path):
        self.staging = staging
        staging.mkdir(parents=True)
        self.shards: list[Path] = []
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write `tensors` (state-dict names) as the next shard. Of tensors sharing memory (tied weights) only the
        first is written, as transformers writes them; tied weights belong to one part (the memory of a part
        already written may hold another part's tensors now)."""
        fresh, written = {}, set()
        for name, tensor in tensors.items():
            if tensor.is_meta:
                raise CheckpointError(f"{name} has no values (it is on the meta device) and cannot be saved")
            if tensor.data_ptr() in written:
                continue
            written.add(tensor.data_ptr())
            fresh[name] = tensor.detach().to("cpu").contiguous()
        if not fresh:
            return
        shard = self.staging / f"part-{len(self.shards)}.safetensors"
        write_file(shard, fresh, metadata={"format": "pt"})
        self.shards.append(shard)
        for name, tensor in fresh.items():
            self.weight_map[name] = shard.name
            self.total_size += tensor.numel() * tensor.element_size()

    def finish(self, model: nn.Module) -> None:
        """Name the shards as transformers does, write the index, the config (and generation config) of `model`,
        which may be on the meta device, and its pruning_config.json when it has a pruning record."""
        names = {}
        for index, shard in enumerate(self.shards, 1):
            names[shard.name] = f"model-{index:05d}-of-{len(self.shards):05d}.safetensors"
            shard.rename(self.staging / names[shard.name])
        index = {"metadata": {"total_size": self.total_size},
                 "weight_map": {name: names[shard] for name, shard in sorted(self.weight_map.items())}}
        (self.staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        model.config.save_pretrained(self.staging)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(self.staging)
        if get_record(model) is not None:
            (self.staging / PRUNING_CONFIG).write_text(json.dumps(pruning_config(model), indent=1))
