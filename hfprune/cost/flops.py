"""Analytic parameter and FLOP counts, per site and per structure (one head, one KV head, one neuron, one channel).

FLOPs count 2 per multiply-accumulate, for one sequence. They cover what pruning changes: the projections
and attention matmuls of every site, and on request (`conv=True`) the conv layers of a speech feature encoder
with its feature projection. Embeddings, norms and task heads are in `params` but not in `flops`.

Encoder-decoder models (Whisper) are counted per utterance, encoder and decoder together: the encoder's sites
at the encoder length (1500 frames after Whisper's conv stem for 30 s of audio), the decoder's at the
decoder length (the mean transcript length in tokens, teacher-forced: every position once), and
cross-attention with queries at the decoder length and keys/values over the encoder length. So `target.flops`
is a fraction of encoder + decoder FLOPs per utterance, and each head or neuron costs what it costs at its own
stack's length. Whisper's conv stem, embeddings and the LM head are not counted (pruning does not change them).
The per-structure figures are exact: removing a head lowers a site's params by `params_per_head` (and its
FLOPs by `flops_per_head`), which is what a budget search spends.

A conv channel is the one exception: conv i costs in_channels x out_channels, a product of two sites' units. A
conv site owns its own conv (and, for the last layer, the feature projection), priced per output channel at
the *current* input channels, so removing a channel of conv i+1 also makes conv i+1's channels cheaper than
counted: a budget spent on these figures is met, possibly with some FLOPs to spare, never exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..core import AttentionSite, ConvSite, resolve_conv_sites, resolve_sites
from ..core.linear import in_features, out_features


def _bias(module: nn.Module) -> int:
    return 0 if getattr(module, "bias", None) is None else 1


@dataclass
class SiteCount:
    """Counts of one site.

    Attributes:
        units: heads (attention), neurons (ffn) or output channels (conv) left; `kv_units` KV heads left
            (attention).
        params, flops: the site's totals now.
        params_per_unit, flops_per_unit: what one query head / one neuron costs.
        params_per_kv_unit, flops_per_kv_unit: what one KV head costs (its K and V rows).
        fixed_params: what stays however many units go (the output bias).
        seconds_per_unit, seconds_per_kv_unit: measured latency of one unit, filled in only for a latency
            budget (`hfprune.latency.LatencyProfile.costed`); 0 otherwise.
        flops_per_hidden: what one channel of the residual stream costs here (the projections reading and writing
            it scale with the hidden size; attention's score and context matmuls do not), for hidden-size budgets.
    """

    name: str
    kind: str
    units: int
    kv_units: int
    params_per_unit: int
    flops_per_unit: int
    params_per_kv_unit: int
    flops_per_kv_unit: int
    fixed_params: int
    seconds_per_unit: float = 0.0
    seconds_per_kv_unit: float = 0.0
    flops_per_hidden: int = 0

    @property
    def params(self) -> int:
        return self.fixed_params + self.units * self.params_per_unit + self.kv_units * self.params_per_kv_unit

    @property
    def flops(self) -> int:
        return self.units * self.flops_per_unit + self.kv_units * self.flops_per_kv_unit


@dataclass
class ModelCount:
    """Counts of a model. `params` is every parameter of the model; `flops` sums the sites'. `seq_len` is the
    length the sites were counted at (the decoder's, for encoder-decoders), `encoder_seq_len` the encoder's
    (None for encoder-only and decoder-only models). `unit` is what one position of the (encoder) layers is:
    "tokens" for text, "frames" for speech (after the feature extractor); a decoder's are always tokens.
    `seconds` is the measured latency of a forward pass, set only for a latency budget."""

    params: int
    sites: dict[str, SiteCount]
    seq_len: int
    encoder_seq_len: int | None = None
    unit: str = "tokens"
    seconds: float | None = None
    embedding_params: int = 0

    @property
    def nonembedding_params(self) -> int:
        """Parameters outside the token embeddings and the (untied) LM head."""
        return self.params - self.embedding_params

    def total(self, metric: str) -> float:
        """The model's total under a budget metric: `flops`, `params`, `nonembedding_params` or `latency`
        (seconds)."""
        if metric == "latency":
            if self.seconds is None:
                raise ValueError("these counts carry no latency; cost them with LatencyProfile.costed first")
            return self.seconds
        return {"flops": self.flops, "params": self.params, "nonembedding_params": self.nonembedding_params}[metric]

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.sites.values())

    @property
    def site_params(self) -> int:
        return sum(s.params for s in self.sites.values())

    def per_layer(self) -> dict[str, tuple[int, int]]:
        """`{"encoder.0": (params, flops), ...}`: the sites of each layer added up."""
        layers: dict[str, tuple[int, int]] = {}
        for site in self.sites.values():
            layer = site.name.rsplit(".", 1)[0]
            params, flops = layers.get(layer, (0, 0))
            layers[layer] = (params + site.params, flops + site.flops)
        return layers

    def __str__(self) -> str:
        rows = [f"{'site':<28}{'kind':<16}{'units':>8}{'params':>14}{'GFLOPs':>10}"]
        for s in self.sites.values():
            rows.append(f"{s.name:<28}{s.kind:<16}{s.units:>8}{s.params:>14,}{s.flops / 1e9:>10.3f}")
        rows.append(f"{'total (model)':<52}{self.params:>14,}{self.flops / 1e9:>10.3f}")
        if any(s.kind == "conv" for s in self.sites.values()):
            return "\n".join(rows) + f"\n(FLOPs for one clip of {self.seq_len} frames after the conv feature encoder)"
        return "\n".join(rows) + f"\n(FLOPs for one sequence of {self.lengths})"

    @property
    def lengths(self) -> str:
        """The lengths the FLOPs are counted at, in words."""
        if self.encoder_seq_len is None:
            return f"{self.seq_len} {self.unit}"
        return f"{self.encoder_seq_len} encoder {self.unit}, {self.seq_len} decoder tokens"


def _attention_count(site: AttentionSite, query_len: int, key_len: int) -> SiteCount:
    o = site.o
    if site.is_empty:
        bias = o.bias.numel() if o.bias is not None else 0
        return SiteCount(site.name, site.kind, 0, 0, 0, 0, 0, 0, bias)
    d, hidden = site.head_dim, in_features(site.q)
    out_dim = out_features(o)
    q_bias = _bias(site.q)
    k_bias, v_bias = _bias(site.k), _bias(site.v)
    params_per_head = d * (hidden + q_bias) + d * out_dim
    for name in site.spec.head_tensors:  # per-head parameters beside the projections (WavLM's gate constants)
        tensor = getattr(site.module, name)
        if isinstance(tensor, nn.Parameter) and site.num_heads:
            params_per_head += tensor.numel() // site.num_heads
    params_per_kv = d * (hidden + k_bias) + d * (hidden + v_bias)
    flops_per_head = 2 * query_len * hidden * d + 4 * query_len * key_len * d + 2 * query_len * d * out_dim
    flops_per_kv = 2 * 2 * key_len * hidden * d
    fixed = out_dim * _bias(o)
    # q and o: 2 * query_len * head_dim per head each; k and v: 2 * key_len * head_dim per KV head each.
    per_hidden = 4 * query_len * d * site.num_heads + 4 * key_len * d * site.num_kv_heads
    return SiteCount(
        site.name, site.kind, site.num_heads, site.num_kv_heads, params_per_head, flops_per_head,
        params_per_kv, flops_per_kv, fixed, flops_per_hidden=per_hidden,
    )


def _ffn_count(site, seq_len: int) -> SiteCount:
    inputs, output = site.inputs, site.output
    hidden = in_features(inputs[0])
    out_dim = out_features(output)
    params_per_neuron = sum(hidden + _bias(m) for m in inputs) + out_dim
    flops_per_neuron = 2 * seq_len * hidden * len(inputs) + 2 * seq_len * out_dim
    per_hidden = site.num_neurons * 2 * seq_len * (len(inputs) + 1)
    return SiteCount(site.name, "ffn", site.num_neurons, 0, params_per_neuron, flops_per_neuron, 0, 0,
                     out_dim * _bias(output), flops_per_hidden=per_hidden)


def conv_frames(sites: list[ConvSite], frames: int) -> list[int]:
    """Output frames of each conv layer for a clip that leaves `frames` frames after the last one.

    Walks the kernels and strides backwards from the shortest input that gives `frames` (the same arithmetic as
    transformers' `_get_feat_extract_output_lengths`, inverted), so the conv FLOPs match the encoder length.
    """
    lengths = [frames]
    for site in reversed(sites[1:]):
        conv = site.conv
        lengths.append((lengths[-1] - 1) * conv.stride[0] + conv.kernel_size[0])
    return lengths[::-1]


def _conv_count(site: ConvSite, frames: int) -> SiteCount:
    conv = site.conv
    kernel_inputs = conv.in_channels * conv.kernel_size[0]
    params_per_channel = kernel_inputs + _bias(conv) + sum(
        sum(p.numel() for p in norm.parameters()) // site.num_channels for norm in site.norms
    )
    flops_per_channel = 2 * kernel_inputs * frames
    fixed = 0
    if site.is_last:  # the feature projection reads the last layer's channels
        projection = site.consumer
        # Other readers (the pre-training quantizer) are parameters, not inference FLOPs.
        params_per_channel += sum(out_features(reader) for reader in site.consumers)
        flops_per_channel += 2 * frames * out_features(projection)
        fixed = out_features(projection) * _bias(projection)
    return SiteCount(site.name, "conv", site.num_channels, 0, params_per_channel, flops_per_channel, 0, 0, fixed)


def count(
    model: nn.Module, seq_len: int = 128, encoder_seq_len: int | None = None, conv: bool = False
) -> ModelCount:
    """Count parameters and FLOPs of `model`, in total and per site.

    Args:
        model: any supported model.
        seq_len: tokens (or audio frames after the feature extractor) per sequence.
        encoder_seq_len: for encoder-decoder models (Whisper), the encoder's length, also the key length of
            cross-attention; defaults to `seq_len`. With it, `seq_len` is the decoder's length (tokens).
        conv: also count the conv sites of a speech feature encoder (per layer 2 x in x out x kernel x output
            frames, the frames of a clip that gives `seq_len` encoder frames) and its feature projection. Off
            by default: FLOPs then cover attention + FFN, as budgets without channel pruning are defined.

    Returns:
        `ModelCount`: `.params`, `.flops`, and `.sites[name]` (`SiteCount`) with per-head/per-neuron costs.

    Example:
        ```python
        >>> counts = hfprune.count(model, seq_len=128)
        >>> counts.flops, counts.sites["encoder.0.attention"].flops_per_unit
        ```
    """
    encoder_seq_len = encoder_seq_len or seq_len
    sites = {}
    transformer = resolve_sites(model)
    conv_sites = resolve_conv_sites(model) if conv else {}
    frames = conv_frames(list(conv_sites.values()), encoder_seq_len) if conv_sites else []
    for (name, site), length in zip(conv_sites.items(), frames, strict=True):
        sites[name] = _conv_count(site, length)
    for name, site in transformer.items():
        length = encoder_seq_len if site.stack.spec.name == "encoder" else seq_len
        if isinstance(site, AttentionSite):
            key_len = encoder_seq_len if site.kind == "cross_attention" else length
            sites[name] = _attention_count(site, length, key_len)
        else:
            sites[name] = _ffn_count(site, length)
    params = sum(p.numel() for p in model.parameters())
    stacks = {site.stack.spec.name for site in transformer.values()}
    encoder = encoder_seq_len if {"encoder", "decoder"} <= stacks else None  # only a two-stack model has both
    # Speech models (wav2vec2 family, Whisper) turn audio into frames with a feature extractor; text has tokens.
    unit = "frames" if hasattr(model, "_get_feat_extract_output_lengths") else "tokens"
    return ModelCount(params=params, sites=sites, seq_len=seq_len, encoder_seq_len=encoder, unit=unit,
                      embedding_params=embedding_params(model))


def embedding_params(model: nn.Module) -> int:
    """Parameters of the token embeddings and the LM head (once, when they are tied)."""
    modules = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            modules.append(getattr(model, getter)())
        except (AttributeError, NotImplementedError):
            continue
    unique = {id(p): p for module in modules if isinstance(module, nn.Module) for p in module.parameters()}
    return sum(p.numel() for p in unique.values())
