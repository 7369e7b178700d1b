"""Export to GGUF, llama.cpp's format, with per-layer shapes: a pruned Llama-family model runs in llama.cpp.

The layout (which architecture holds which shapes, the stand-ins for emptied blocks) is in `gguf_layout`, the
tokenizer in `gguf_vocab`; this module checks the request, writes the metadata and tensors with the `gguf`
package's GGUFWriter, and moves the file into place only once it is complete.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch.nn as nn

from ..errors import CheckpointError, UnsupportedModelError
from ..version import __version__
from .gguf_layout import Layout, layout, tensors
from .save import pruning_config

# dtype -> llama.cpp's file type (general.file_type) name in the gguf package's LlamaFileType.
DTYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


class ExportError(CheckpointError):
    """A model that cannot be exported as asked (soft masks still attached, a missing output folder...)."""


def export_gguf(model_or_dir: nn.Module | str | os.PathLike, path: str | os.PathLike, dtype: str = "f32",
                tokenizer=None, per_layer: bool = False) -> Path:
    """Write a Llama, Mistral or Qwen2 model, pruned or not, to a GGUF file that llama.cpp runs.

    Per-layer head counts, KV head counts and FFN widths are written as llama.cpp's per-layer arrays; a model whose
    layers are all alike is written as a plain `llama` model, one whose layers differ as `deci` (llama.cpp's Llama
    with per-layer sizes). Removed layers are simply absent; a block that lost every head or neuron is an
    attention-free layer or an all-zero stand-in (see `hfprune.checkpoint.gguf_layout`). The file is written beside
    `path` under a temporary name and renamed into place when complete.

    Args:
        model_or_dir: a model, or a checkpoint directory (loaded with `hfprune.from_pretrained`).
        path: the `.gguf` file to write; its folder must exist.
        dtype: `"f32"`, `"f16"` or `"q8_0"` for the matrices (norms and biases stay f32; a matrix whose rows are
            not a multiple of 32 long, which Q8_0 blocks need, is written f16).
        tokenizer: where the tokenizer comes from: a `.gguf` file (its `tokenizer.*` metadata is copied), a
            directory with `tokenizer.json`, or a transformers tokenizer. By default, the checkpoint directory
            (`model_or_dir`, or the directory the model was loaded from).
        per_layer: write the per-layer `deci` layout even when every layer is alike (to compare layouts; a
            uniform model is otherwise written as `llama`, which more runtimes read).

    Returns:
        `Path` of the written file.

    Raises:
        UnsupportedModelError: a family other than Llama, Mistral or Qwen2, or RoPE scaling llama.cpp cannot take.
        ExportError: soft masks or other hooks attached, an unknown dtype, a missing output folder.
        CheckpointError: no usable tokenizer.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        import gguf  # the writer: an optional dependency (`pip install hfprune[gguf]`), imported only to export
    except ImportError as error:
        raise ExportError("GGUF export needs the PyPI package gguf: `pip install gguf`") from error
    from .gguf_vocab import tokenizer_writer

    model, source = _model(model_or_dir)
    _check_no_hooks(model)
    plan = layout(model, per_layer)
    rope = _rope(model.config, plan.head_dim)
    write_tokenizer = tokenizer_writer(tokenizer, source, model.get_input_embeddings().weight.shape[0])
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        writer = gguf.GGUFWriter(staging, plan.arch)
        _metadata(gguf, writer, model, plan, rope, dtype)
        write_tokenizer(writer)
        for name, array in tensors(model, plan):
            data, raw_dtype = _encode(gguf, array, dtype)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        if rope.get("freqs") is not None:
            writer.add_tensor("rope_freqs.weight", rope["freqs"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _model(model_or_dir) -> tuple[nn.Module, Path | None]:
    if isinstance(model_or_dir, nn.Module):
        name = getattr(model_or_dir, "name_or_path", "") or ""
        return model_or_dir, Path(name) if name and Path(name).is_dir() else None
    directory = Path(model_or_dir)
    if not (directory / "config.json").is_file():
        raise ExportError(f"{directory} is not a checkpoint directory (no config.json)")
    from .load import from_pretrained

    return from_pretrained(directory).eval(), directory


def _check_no_hooks(model: nn.Module) -> None:
    """A hook changes what the module computes (soft masks, distillation), and GGUF cannot carry it."""
    hooked = [name or "(the model)" for name, module in model.named_modules()
              if module._forward_hooks or module._forward_pre_hooks]
    if hooked:
        raise ExportError(
            f"{len(hooked)} modules have forward hooks attached (e.g. {hooked[0]}): soft masks (hfprune.SoftMasks) or "
            "gates still in place. Prune physically (or leave the `with SoftMasks(...)` block) before exporting"
        )


def _rope(config, head_dim: int) -> dict:
    """The RoPE settings llama.cpp needs: base, and for Llama 3 scaling the per-frequency factors tensor."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    kind = params.get("rope_type", "default")
    rope = {"theta": params.get("rope_theta", getattr(config, "rope_theta", 10000.0)), "kind": kind}
    if kind == "default":
        return rope
    if kind == "linear":
        return {**rope, "factor": params["factor"]}
    if kind == "llama3":
        return {**rope, "freqs": _llama3_factors(params, rope["theta"], head_dim)}
    raise UnsupportedModelError(f"RoPE scaling {kind!r}: GGUF export handles default, linear and llama3")


def _llama3_factors(params: dict, theta: float, head_dim: int) -> np.ndarray:
    """Llama 3's per-frequency divisors (convert_hf_to_gguf.py writes them as `rope_freqs.weight`): long wavelengths
    are slowed by `factor`, short ones kept, and those between interpolated smoothly."""
    factor, low, high = params["factor"], params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _metadata(gguf, writer, model: nn.Module, plan: Layout, rope: dict, dtype: str) -> None:
    config = model.config
    writer.add_name(Path(getattr(model, "name_or_path", "") or config.model_type).name or config.model_type)
    writer.add_file_type(getattr(gguf.LlamaFileType, DTYPES[dtype]))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(model.get_input_embeddings().weight.shape[1])
    writer.add_block_count(len(plan.layers))
    writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
    heads = [layer.heads for layer in plan.layers]
    kv_heads = [layer.kv_heads for layer in plan.layers]
    ffn = [layer.ffn for layer in plan.layers]
    # A uniform model gets plain numbers, which every GGUF reader takes; per-layer arrays only where needed.
    writer.add_head_count(heads[0] if plan.uniform else heads)
    writer.add_head_count_kv(kv_heads[0] if plan.uniform else kv_heads)
    writer.add_feed_forward_length(ffn[0] if plan.uniform else ffn)
    # Always explicit: llama.cpp otherwise derives the head size as hidden / heads, wrong once heads are pruned.
    writer.add_key_length(plan.head_dim)
    writer.add_value_length(plan.head_dim)
    writer.add_rope_dimension_count(plan.head_dim)
    writer.add_rope_freq_base(float(rope["theta"]))
    if rope["kind"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_string("hfprune.version", __version__)
    writer.add_string("hfprune.pruning_config", json.dumps(pruning_config(model)))


def _encode(gguf, array: np.ndarray, dtype: str) -> tuple[np.ndarray, object]:
    """(data, raw_dtype) for GGUFWriter.add_tensor. Vectors (norms, biases) stay f32, as llama.cpp expects."""
    if array.ndim == 1 or dtype == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), None
    if dtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return np.ascontiguousarray(array, dtype=np.float16), None
