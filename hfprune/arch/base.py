"""What an architecture adapter is: a *description* of where a family keeps its prunable structures.

An adapter never acts on a model. Scoring, masking, surgery and saving read the description and act
through the generic code in `hfprune.surgery` / `hfprune.masks`. Adding a family means writing one
`Adapter(...)` with its specs; if a family needs an `if` in the surgery, a field is missing here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

# Quantities a module attribute can follow when heads are removed.
HEAD_QUANTITIES = ("heads", "kv_heads", "width", "kv_width", "groups")

# The recipe structure that removes units of each site kind (a site kind is what `hfprune.sites` reports).
STRUCTURE_OF_KIND = {"attention": "heads", "cross_attention": "heads", "ffn": "neurons", "conv": "channels"}


@dataclass(frozen=True)
class AttentionSpec:
    """Where one attention block of a layer lives, relative to the layer module.

    Args:
        kind: `"attention"` (self-attention) or `"cross_attention"`.
        module: path of the attention module that owns q/k/v (and the attributes to sync). It is the module
            replaced by `EmptyAttention` when every head is removed.
        q, k, v: paths of the projections, relative to `module`. For a fused projection (GPT-2 `c_attn`) all
            three name the same module and `fused_qkv` is set: its outputs are [q | k | v].
        o: path of the output projection, relative to the *layer* (BERT keeps it outside the attention module).
        head_dim_attr: attribute of `module` holding the head size; head_dim never changes under pruning.
        attributes: module attribute -> quantity it equals after surgery, one of `HEAD_QUANTITIES`
            (`width` = heads * head_dim, `groups` = heads // kv_heads).
        optional: the block exists only in some configs (BERT used as a decoder with cross-attention).
        head_tensors: other parameters/buffers of `module` indexed by head, `{name: dim}`, sliced with the heads.
        replace_when_empty: replace `module` by `EmptyAttention` when it loses every head. Families whose
            module computes zero heads correctly itself (and must keep returning extra outputs) set False.
        residual: where the residual that this block's output is added to can be read: `"path:i"` is the i-th
            input of the module at `path` (relative to the layer; an empty path is the layer itself). Mask tuning
            reconstructs residual + output, as Kwon et al. do. A callable `layer -> str` where it depends on
            the config.
        bias_field: config field that gives q, k, v and o a bias when true (Llama's `attention_bias`), for
            families built without one: weight reconstruction may then add a fitted bias (`add_bias`).
    """

    kind: str
    module: str
    q: str
    k: str
    v: str
    o: str
    head_dim_attr: str = "head_dim"
    attributes: dict[str, str] = field(default_factory=dict)
    fused_qkv: bool = False
    optional: bool = False
    head_tensors: dict[str, int] = field(default_factory=dict)
    replace_when_empty: bool = True
    residual: str | Callable[[nn.Module], str] = ":0"
    bias_field: str | None = None

    def __post_init__(self):
        bad = {a: q for a, q in self.attributes.items() if q not in HEAD_QUANTITIES}
        if bad:
            raise ValueError(f"unknown head quantities {bad}; use one of {HEAD_QUANTITIES}")


@dataclass(frozen=True)
class FfnSpec:
    """Where the feed-forward block of a layer lives, relative to the layer module.

    Args:
        inputs: the projections whose *outputs* are the neurons (`[up]`, or `[gate, up]` for gated MLPs).
        output: the projection whose *inputs* are the neurons (down).
        attributes: `{module path: attribute}` pairs that hold the FFN width (Llama's `mlp.intermediate_size`).
        residual: as in `AttentionSpec`: where the residual added to the FFN's output is read.
        bias_field: as in `AttentionSpec`, for every input and the output projection (Llama's `mlp_bias`).
    """

    inputs: tuple[str, ...]
    output: str
    residual: str | Callable[[nn.Module], str]
    attributes: dict[str, str] = field(default_factory=dict)
    bias_field: str | None = None


@dataclass(frozen=True)
class StackSpec:
    """A stack of identical layers (an encoder or a decoder) and the config fields that describe it.

    Args:
        name: the stack's name in site names (`"encoder"`, `"decoder"`).
        path: suffix of the `nn.ModuleList` holding the layers (`"encoder.layer"` matches `bert.encoder.layer`).
        attention: the attention blocks of each layer.
        ffn: the feed-forward block of each layer.
        layers_field: config field with the number of layers.
        ffn_field: config field with the FFN width, written when every layer has the same width.
        heads_field, kv_heads_field, head_dim_field: config fields for head counts. Only families whose config
            can express a head count independently of `hidden_size` set them (Llama-family carries `head_dim`).
        first_layer_modules: modules that only the first layer holds but every layer uses (WavLM's relative
            position embedding); when layer 0 is removed they move to the new first layer.
    """

    name: str
    path: str
    attention: tuple[AttentionSpec, ...]
    ffn: FfnSpec
    layers_field: str
    ffn_field: str | None = None
    heads_field: str | None = None
    kv_heads_field: str | None = None
    head_dim_field: str | None = None
    first_layer_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConvSpec:
    """A stack of 1-d convolutions whose output channels can be pruned (the CNN feature encoder of wav2vec2,
    HuBERT, WavLM). Conv layer i is the site `"{name}.{i}.conv"`; its channels are conv i's outputs, the inputs
    of conv i+1, and for the last layer the inputs of `output` (through `output_norm`).

    Args:
        name: the stack's name in site names (`"feature_extractor"`).
        path: suffix of the `nn.ModuleList` holding the conv layers.
        conv: path of the `nn.Conv1d` inside a conv layer.
        norm: path of the layer's norm over channels inside a conv layer, where it has one (a GroupNorm with one
            group per channel, or a LayerNorm over channels); sliced with the channels.
        output: path of the projection reading the last layer's channels, relative to the module holding the
            conv stack's parent (`feature_projection.projection` beside `feature_extractor`).
        output_norm: path (relative like `output`) of the norm over the last layer's channels before `output`,
            where the config builds one.
        readers: paths, relative to the model, of further projections that read the last layer's channels after
            `output_norm`, sliced with them where the model has them (the pre-training quantizer's `weight_proj`).
        out_attribute, in_attribute: conv-layer attributes holding its output / input channel counts.
        dims_field: config field listing the channels of every conv layer; pruned sizes are written to it, so the
            stock `from_pretrained` builds the pruned shapes.
    """

    name: str
    path: str
    conv: str
    norm: str
    output: str
    output_norm: str
    out_attribute: str
    in_attribute: str
    dims_field: str
    readers: tuple[str, ...] = ()


@dataclass(frozen=True)
class HiddenSpec:
    """Where a family's residual stream lives: the hidden size (`config.hidden_size`), one set of channels shared by
    the whole model, which hidden-size pruning (Minitron's "embedding channels") narrows everywhere at once.

    Inside each layer the stream's readers are the sites' q/k/v and FFN input projections, and its writers their
    output projections (taken from `AttentionSpec`/`FfnSpec`, so they are not repeated here); this spec names what
    lies outside them.

    Args:
        embeddings: paths, relative to the base model (`model.base_model`), of the embeddings whose columns are the
            channels (token, position and token-type embeddings).
        norms: paths, relative to the base model, of the norms over the hidden size outside the layers (BERT's
            `embeddings.LayerNorm`, Llama's final `norm`).
        layer_norms: paths, relative to a layer, of its norms over the hidden size.
        heads: task-model class name -> paths, relative to that model, of the head projections whose inputs are the
            stream (`lm_head`, a classifier reading hidden states). A class not listed is refused: its head could
            read the stream in a way nobody described, and a model half pruned is worse than an error.
        readers: paths, relative to the base model, of further projections reading the stream, sliced where the
            model has them (BERT's `pooler.dense`; a model built with `add_pooling_layer=False` has none).
        attributes: `{path relative to a layer: attribute}` pairs holding the hidden size (Llama's `mlp.hidden_size`;
            `""` is the layer itself).
        norm_kind: how the norms compute their statistics, for norm classes not known by type (`"rms"`: Llama's
            RMSNorm, x * rsqrt(mean(x^2) + eps) * weight); None: known by type (`nn.LayerNorm`).
        size_field: config field with the hidden size, written after pruning.
        head_dim_field: config field written with the (unchanged) head size, so that the config no longer derives it
            from the hidden size (Llama's `head_dim`): a uniformly pruned checkpoint then loads with plain
            `from_pretrained`. None where the config cannot carry it (BERT derives its head size as
            hidden_size / heads): such checkpoints reload through `hfprune.from_pretrained`.
        multiple_of_field: config field the hidden size must be a multiple of, where transformers refuses the config
            otherwise (a `LlamaConfig` with a hidden size that is no multiple of `num_attention_heads` can be neither
            saved nor loaded, even with `head_dim` given).
        model_types: the adapter's model types this description holds for (empty: all of them); ELECTRA shares
            BERT's adapter but not its embeddings.
    """

    embeddings: tuple[str, ...]
    norms: tuple[str, ...]
    layer_norms: tuple[str, ...]
    heads: dict[str, tuple[str, ...]]
    readers: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    norm_kind: str | None = None
    size_field: str = "hidden_size"
    head_dim_field: str | None = None
    multiple_of_field: str | None = None
    model_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Adapter:
    """Describes one model family.

    Args:
        model_types: `config.model_type` values this adapter serves.
        stacks: the family's layer stacks.
        prepare: optional callable run on the model before any hfprune code reads it, for families whose stock
            modules must be swapped for an equivalent, prunable implementation (WavLM's attention). It must be
            idempotent and keep parameter names, so checkpoints stay compatible.
        conv: the family's prunable convolution stack, if it has one (speech encoders).
        hidden: where the family's residual stream lives, for hidden-size pruning; None where it is not described.
        oneshot_defaults: recipe values that one-shot `prune` of heads and neurons uses where a recipe leaves them
            unset (`sites`, `rearrange`, `tune`, `reconstruct`), for families whose measurements showed that a
            structure cannot lose units without retraining, or that a refinement hurts; empty: the library's.
    """

    model_types: tuple[str, ...]
    stacks: tuple[StackSpec, ...]
    conv: ConvSpec | None = None
    hidden: HiddenSpec | None = None
    oneshot_defaults: dict = field(default_factory=dict)
    prepare: Callable[[nn.Module], None] | None = None
