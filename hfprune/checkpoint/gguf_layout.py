"""How a (pruned) Llama-family model is laid out in llama.cpp's GGUF: per-layer shapes, the architecture that can
hold them, and the tensors under llama.cpp's names and conventions.

llama.cpp reads `head_count`, `head_count_kv` and `feed_forward_length` as per-layer arrays for every
architecture, but its `llama` and `qwen2` graphs build every layer with layer 0's sizes, so a file whose layers
differ fails to load there ("tensor has wrong shape"). Its `deci` architecture (DeciLM / Nemotron-NAS: Llama with
per-layer sizes) builds each layer with its own sizes, and takes `head_count` 0 as an attention-free layer. So:

- every layer alike (uniform pruning, removed layers, the dense model): `llama`, the architecture every GGUF
  runtime knows. Qwen2 too: llama.cpp's `qwen2` graph assumes heads x head size = hidden size, which pruning
  breaks, while `llama` takes Qwen2's Q/K/V biases and, with the rows permuted as for Llama, computes the same;
- layers that differ: `deci`, which has Llama's computation (RMS norms, rotary attention, SwiGLU) per layer.

Two holes in `deci` are filled with stand-ins that compute exactly zero, so outputs do not change:
- an FFN with no neurons left keeps one neuron with all-zero weights: `deci` skips the whole rest of a layer
  whose `feed_forward_length` is 0, its attention output included;
- an attention block with no heads left keeps one all-zero head when it is layer 0 (llama.cpp takes the head
  size from layer 0's head count, so 0 there would leave every layer with head size 0) or when its output
  projection has a non-zero bias (an attention-free `deci` layer adds nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..core import AttentionSite, FfnSite, resolve_sites
from ..errors import UnsupportedModelError

# hfprune model_type -> GGUF architecture for a model whose layers are all alike.
UNIFORM_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "llama"}
PER_LAYER_ARCH = "deci"
# Architectures whose rotary embedding pairs dimension i with i+1 (GGML's "normal" RoPE); transformers' rotate_half
# pairs i with i + head_dim/2, so Q and K rows are permuted for these (convert_hf_to_gguf.py does the same).
INTERLEAVED_ROPE = ("llama", "deci")


@dataclass
class LayerShape:
    """One decoder layer as written to GGUF. `stand_in_head` / `stand_in_neuron`: the block had no units left and
    is written with one all-zero unit (see the module docstring)."""

    heads: int
    kv_heads: int
    ffn: int
    stand_in_head: bool = False
    stand_in_neuron: bool = False


@dataclass
class Layout:
    arch: str
    head_dim: int
    layers: list[LayerShape]

    @property
    def uniform(self) -> bool:
        return self.arch != PER_LAYER_ARCH


def supported_model_types() -> tuple[str, ...]:
    return tuple(UNIFORM_ARCH)


def layout(model: nn.Module, per_layer: bool = False) -> Layout:
    """The GGUF architecture and per-layer shapes for `model` (a Llama, Mistral or Qwen2 model, pruned or not);
    `per_layer`: the per-layer architecture even when every layer is alike."""
    model_type = model.config.model_type
    if model_type not in UNIFORM_ARCH:
        raise UnsupportedModelError(
            f"GGUF export handles the {', '.join(UNIFORM_ARCH)} families (llama.cpp runs them with per-layer "
            f"shapes); this is a {model_type!r} model"
        )
    attention, ffn = _sites_by_layer(model)
    head_dim = _head_dim(model, attention)
    raw = [(attention[i].num_heads, attention[i].num_kv_heads, ffn[i].num_neurons) for i in range(len(attention))]
    if not per_layer and len(set(raw)) <= 1 and all(h > 0 and f > 0 for h, _, f in raw):
        return Layout(UNIFORM_ARCH[model_type], head_dim, [LayerShape(*shape) for shape in raw])
    layers = []
    for index, (heads, kv_heads, width) in enumerate(raw):
        shape = LayerShape(heads, kv_heads, width)
        if heads == 0 and (index == 0 or _has_output_bias(attention[index])):
            shape.heads = shape.kv_heads = 1
            shape.stand_in_head = True
        if width == 0:
            shape.ffn = 1
            shape.stand_in_neuron = True
        layers.append(shape)
    return Layout(PER_LAYER_ARCH, head_dim, layers)


def _sites_by_layer(model: nn.Module) -> tuple[list[AttentionSite], list[FfnSite]]:
    sites = list(resolve_sites(model).values())
    attention = [s for s in sites if isinstance(s, AttentionSite)]
    ffn = [s for s in sites if isinstance(s, FfnSite)]
    if len(attention) != len(ffn) or [s.layer_index for s in attention] != list(range(len(attention))):
        raise UnsupportedModelError("GGUF export expects one attention block and one FFN in every decoder layer")
    return attention, ffn


def _head_dim(model: nn.Module, attention: list[AttentionSite]) -> int:
    dims = {site.head_dim for site in attention}
    if len(dims) != 1:
        raise UnsupportedModelError(f"GGUF export needs one head size for all layers, found {sorted(dims)}")
    return dims.pop()


def _has_output_bias(site: AttentionSite) -> bool:
    bias = getattr(site.o, "bias", None)
    return bias is not None and bool(torch.any(bias != 0))


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows (or entries, for a bias) of a Q or K projection from transformers' rotate_half layout
    (dimension i paired with i + head_dim/2) to GGML's interleaved one (i paired with i+1), head by head."""
    head_dim = weight.shape[0] // heads
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tensors(model: nn.Module, plan: Layout) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every tensor of `model`, in llama.cpp's names and layouts.

    Arrays keep torch's (out_features, in_features) order: GGUF stores dimensions reversed, which is what ggml's
    matmul expects. The output projection is left out when tied to the embeddings (llama.cpp reuses them).
    """
    base = model.get_submodule(model.base_model_prefix) if hasattr(model, model.base_model_prefix) else model
    yield "token_embd.weight", _array(base.embed_tokens.weight)
    attention, ffn = _sites_by_layer(model)
    for index, shape in enumerate(plan.layers):
        yield from _attention(f"blk.{index}", attention[index], shape, plan)
        yield from _ffn(f"blk.{index}", ffn[index], shape, model.config.hidden_size)
    yield "output_norm.weight", _array(base.norm.weight)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.data_ptr() != base.embed_tokens.weight.data_ptr():
        yield "output.weight", _array(head.weight)


def _attention(prefix: str, site: AttentionSite, shape: LayerShape, plan: Layout) -> Iterator[tuple[str, np.ndarray]]:
    layer = site.root.get_submodule(site.layer_path)
    hidden = layer.input_layernorm.weight.shape[0]
    if shape.heads == 0:  # attention-free `deci` layer: no norm, no projections
        return
    yield f"{prefix}.attn_norm.weight", _array(layer.input_layernorm.weight)
    interleave = plan.arch in INTERLEAVED_ROPE
    if shape.stand_in_head:
        zeros = np.zeros((plan.head_dim, hidden), dtype=np.float32)
        for name in ("attn_q", "attn_k", "attn_v"):
            yield f"{prefix}.{name}.weight", zeros
        yield f"{prefix}.attn_output.weight", np.zeros((hidden, plan.head_dim), dtype=np.float32)
        if site.o.bias is not None:
            yield f"{prefix}.attn_output.bias", _array(site.o.bias)
        return
    for name, module, heads in (("attn_q", site.q, shape.heads), ("attn_k", site.k, shape.kv_heads),
                                ("attn_v", site.v, None)):
        rotate = interleave and heads is not None
        for kind in ("weight", "bias"):
            value = getattr(module, kind)
            if value is not None:
                yield f"{prefix}.{name}.{kind}", permute_rotary(_array(value), heads) if rotate else _array(value)
    yield f"{prefix}.attn_output.weight", _array(site.o.weight)
    if site.o.bias is not None:
        yield f"{prefix}.attn_output.bias", _array(site.o.bias)


def _ffn(prefix: str, site: FfnSite, shape: LayerShape, hidden: int) -> Iterator[tuple[str, np.ndarray]]:
    layer = site.root.get_submodule(site.layer_path)
    yield f"{prefix}.ffn_norm.weight", _array(layer.post_attention_layernorm.weight)
    gate, up = site.inputs
    down = site.output
    if shape.stand_in_neuron:  # one neuron whose down column is zero: silu(.) * . * 0 adds nothing
        yield f"{prefix}.ffn_gate.weight", np.zeros((1, hidden), dtype=np.float32)
        yield f"{prefix}.ffn_up.weight", np.zeros((1, hidden), dtype=np.float32)
        yield f"{prefix}.ffn_down.weight", np.zeros((hidden, 1), dtype=np.float32)
    else:
        yield f"{prefix}.ffn_gate.weight", _array(gate.weight)
        yield f"{prefix}.ffn_up.weight", _array(up.weight)
        yield f"{prefix}.ffn_down.weight", _array(down.weight)
    for name, module, width in (("ffn_gate", gate, shape.ffn), ("ffn_up", up, shape.ffn),
                                ("ffn_down", down, hidden)):
        if getattr(module, "bias", None) is not None:
            bias = _array(module.bias)
            yield f"{prefix}.{name}.bias", bias if bias.shape[0] == width else np.zeros(width, dtype=np.float32)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
