"""safetensors files read and written with plain file reads and writes, tensor by tensor, never mapped.

`safetensors.safe_open` maps the whole file into the process (privately: the mapping counts as the process's data,
so a process limited to less memory than a shard cannot even read a shard's header), and `save_file` builds each
tensor's bytes before writing them. Pruning a model larger than memory one block at a time
(`hfprune.checkpoint.stream`) must hold no more than the block: here a tensor is read straight into its own
memory, and written from it. The format (https://github.com/huggingface/safetensors#format): 8 bytes of header
length (little-endian), a JSON header (`{name: {dtype, shape, data_offsets}}`, optional `__metadata__`), then
the tensors' bytes, contiguous, in order of their offsets.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER = 100_000_000


@dataclass
class Entry:
    """Where one tensor lies in its file: absolute byte offsets, dtype and shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, Entry]:
    """The tensors of the safetensors file at `path`, from its header alone, checked against the file's size.

    Raises:
        `CheckpointError` naming the file when it is not a complete safetensors file.
    """
    try:
        with open(path, "rb") as file:
            size = path.stat().st_size
            (length,) = struct.unpack("<Q", file.read(8))
            if length > min(MAX_HEADER, size - 8):
                raise ValueError(f"a header of {length} bytes in a file of {size}")
            header = json.loads(file.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise CheckpointError(f"{path} could not be read as safetensors: {error}") from error
    base, entries = 8 + length, {}
    for name, value in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = DTYPES[value["dtype"]], tuple(int(d) for d in value["shape"])
            start, end = (base + int(o) for o in value["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: the header entry of {name} is malformed ({error!r})") from error
        if end - start != math.prod(shape) * dtype.itemsize or not base <= start <= end <= size:
            raise CheckpointError(f"{path}: tensor {name} lies outside the file or has the wrong size (truncated?)")
        entries[name] = Entry(dtype, shape, start, end)
    return entries


def read_tensors(path: Path, entries: dict[str, Entry], names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` of the file at `path` (`entries`: its `read_header`), each read into its own memory."""
    tensors = {}
    with open(path, "rb") as file:
        for name in names:
            entry = entries[name]
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
            if tensor.numel():
                file.seek(entry.start)
                read = file.readinto(_bytes(tensor))
                if read != entry.end - entry.start:
                    raise CheckpointError(f"{path}: tensor {name} is cut short ({read} of {entry.end - entry.start} "
                                          "bytes)")
            tensors[name] = tensor
    return tensors


def write_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (CPU, contiguous, not sharing memory) to `path` as a safetensors file."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the tensors' bytes start 8-aligned, as safetensors writes them
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                file.write(_bytes(tensor))


def _bytes(tensor: torch.Tensor) -> memoryview:
    """The memory of a contiguous CPU tensor, as bytes (little-endian, as safetensors stores them)."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
