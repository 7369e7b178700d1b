"""Physical removal of heads, FFN neurons, conv channels and layers, built on the one slicing primitive in
`linear.py` (and `norms.py` for norms over channels).

Every public function validates its whole request before it touches a weight, so a bad request leaves the
model as it was. Indices always refer to the structure as it is now; `record.PruningRecord` maps them back to
the dense model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from ..errors import PruningSpecError
from .conv import ConvSite, resolve_conv_sites
from .linear import keep_along, keep_inputs, keep_outputs, out_features
from .modules import BiasOnly, EmptyAttention
from .norms import keep_norm_channels, norm_layout
from .record import ensure_record
from .sites import AttentionSite, FfnSite, find_stacks, prepared_adapter, resolve_sites


def sites(model: nn.Module) -> dict[str, str]:
    """Names and kinds of the prunable sites of `model`, in model order.

    Example:
        ```python
        >>> hfprune.sites(model)
        {"encoder.0.attention": "attention", "encoder.0.ffn": "ffn", ...}
        >>> hfprune.sites(wav2vec2)   # speech encoders: the CNN's conv layers come first
        {"feature_extractor.0.conv": "conv", ..., "encoder.0.attention": "attention", ...}
        ```
    """
    transformer = resolve_sites(model)  # first: lets the adapter swap in prunable modules
    return {name: site.kind for name, site in {**resolve_conv_sites(model), **transformer}.items()}


def _checked_indices(name: str, what: str, indices: Iterable[int], size: int) -> list[int]:
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise PruningSpecError(f"{name}: {what} index {bad[0]} is out of range; the site has {size} {what}s now")
    if len(set(indices)) != len(indices):
        raise PruningSpecError(f"{name}: {what} indices contain duplicates: {sorted(indices)}")
    return sorted(indices)


def _site(all_sites: dict, name: str, kind_class: type, what: str):
    site = all_sites.get(name)
    if site is None or not isinstance(site, kind_class):
        known = [n for n, s in all_sites.items() if isinstance(s, kind_class)]
        raise PruningSpecError(f"no {what} site named {name!r}; {what} sites are: {', '.join(known)}")
    return site


def _gqa_keep(site: AttentionSite, removed: list[int]) -> tuple[list[int], list[int]]:
    """Kept query and KV heads after removing `removed` query heads, under the GQA rule.

    Either a whole KV group goes (its KV head and all its query heads), or every remaining group loses the same
    number of query heads, so queries-per-KV-head stays an integer.
    """
    heads, kv_heads = site.num_heads, site.num_kv_heads
    group = heads // kv_heads
    removed_set = set(removed)
    removed_per_group = [sum(h in removed_set for h in range(g * group, (g + 1) * group)) for g in range(kv_heads)]
    kept_groups = [g for g in range(kv_heads) if removed_per_group[g] < group]
    if len({removed_per_group[g] for g in kept_groups}) > 1:
        raise PruningSpecError(
            f"{site.name}: with {heads} query heads over {kv_heads} KV heads, remove whole KV groups or the same "
            f"number of query heads from every group; this request removes {removed_per_group} per group"
        )
    kept_heads = [h for h in range(heads) if h not in removed_set and h // group in kept_groups]
    return kept_heads, kept_groups


def _head_index(heads: list[int], head_dim: int, device) -> torch.Tensor:
    """Feature indices of `heads` in a projection laid out head after head."""
    heads = torch.tensor(heads, dtype=torch.long, device=device)
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=device)).flatten()


def _sync_attributes(site: AttentionSite, heads: int, kv_heads: int) -> None:
    values = {
        "heads": heads,
        "kv_heads": kv_heads,
        "width": heads * site.head_dim,
        "kv_width": kv_heads * site.head_dim,
        "groups": heads // kv_heads if kv_heads else 0,
    }
    module = site.module
    for attribute, quantity in site.spec.attributes.items():
        setattr(module, attribute, values[quantity])


def _empty_attention(site: AttentionSite) -> None:
    """Replace an attention block that loses every head by a module returning the output bias."""
    module, o = site.module, site.o
    bias_only = BiasOnly(out_features(o), o.bias)
    output = None
    if site.o_inside:
        output = (site.spec.o[len(site.spec.module) + 1 :], bias_only)
    else:
        site.root.set_submodule(site.o_path, bias_only)
    empty = EmptyAttention(
        head_dim=site.head_dim,
        layer_idx=getattr(module, "layer_idx", None),
        updates_cache=site.kind == "attention",
        output=output,
    )
    empty.train(module.training)
    site.root.set_submodule(site.module_path, empty)


def _shrink_attention(site: AttentionSite, kept_heads: list[int], kept_kv: list[int]) -> None:
    heads, kv_heads, head_dim = site.num_heads, site.num_kv_heads, site.head_dim
    device = site.o.weight.device
    q_index = _head_index(kept_heads, head_dim, device)
    kv_index = _head_index(kept_kv, head_dim, device)
    if site.spec.fused_qkv:
        q_width, kv_width = heads * head_dim, kv_heads * head_dim
        keep_outputs(site.q, torch.cat([q_index, q_width + kv_index, q_width + kv_width + kv_index]))
    else:
        keep_outputs(site.q, q_index)
        if len(kept_kv) != kv_heads:
            keep_outputs(site.k, kv_index)
            keep_outputs(site.v, kv_index)
    keep_inputs(site.o, q_index)
    head_index = torch.tensor(kept_heads, dtype=torch.long)
    for name, dim in site.spec.head_tensors.items():
        keep_along(site.module, name, dim, head_index)
    _sync_attributes(site, len(kept_heads), len(kept_kv))


def remove_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]) -> None:
    """Physically remove attention heads.

    Args:
        model: any supported model (base or task model); shrunk in place.
        heads: site name -> indices of the query heads to remove, as the site is now. For GQA models, remove
            whole KV groups or the same number of query heads in every group. Removing every head of a site
            replaces its attention by a module that returns the output projection's bias.

    Example:
        ```python
        >>> hfprune.remove_heads(model, {"encoder.0.attention": [1, 3], "encoder.1.attention": [0]})
        ```
    """
    all_sites = resolve_sites(model)  # resolving also lets the adapter swap in prunable modules
    plan = []
    for name, indices in heads.items():
        site = _site(all_sites, name, AttentionSite, "attention")
        removed = _checked_indices(name, "head", indices, site.num_heads)
        if removed:
            plan.append((site, *_gqa_keep(site, removed)))
    if not plan:
        return
    record = ensure_record(model)
    for site, kept_heads, kept_kv in plan:
        record.keep("heads", site.name, site.num_heads, kept_heads)
        record.keep("kv_heads", site.name, site.num_kv_heads, kept_kv)
        if kept_heads or not site.spec.replace_when_empty:
            _shrink_attention(site, kept_heads, kept_kv)
        else:
            _empty_attention(site)
    sync_config(model)


def remove_neurons(model: nn.Module, neurons: Mapping[str, Iterable[int]]) -> None:
    """Physically remove FFN neurons (rows of up/gate, columns of down).

    Args:
        model: any supported model; shrunk in place.
        neurons: site name -> indices of the neurons to remove, as the site is now.

    Example:
        ```python
        >>> hfprune.remove_neurons(model, {"encoder.0.ffn": [5, 9, 100]})
        ```
    """
    all_sites = resolve_sites(model)  # resolving also lets the adapter swap in prunable modules
    plan = []
    for name, indices in neurons.items():
        site = _site(all_sites, name, FfnSite, "ffn")
        removed = set(_checked_indices(name, "neuron", indices, site.num_neurons))
        if removed:
            plan.append((site, [n for n in range(site.num_neurons) if n not in removed]))
    if not plan:
        return
    record = ensure_record(model)
    for site, kept in plan:
        record.keep("neurons", site.name, site.num_neurons, kept)
        keep = torch.tensor(kept, dtype=torch.long)
        for projection in site.inputs:
            keep_outputs(projection, keep)
        keep_inputs(site.output, keep)
        for path, attribute in site.spec.attributes.items():
            setattr(site.root.get_submodule(f"{site.layer_path}.{path}"), attribute, len(kept))
    sync_config(model)


def remove_channels(model: nn.Module, channels: Mapping[str, Iterable[int]]) -> None:
    """Physically remove output channels of conv layers (speech feature encoders).

    Channel c of conv i goes from conv i's outputs (weight and bias), from the norm over conv i's channels, and
    from the inputs of whatever reads them: conv i+1, or for the last conv the feature projection (and its
    norm). `config.conv_dim` follows, so the stock `from_pretrained` builds the pruned feature encoder.

    Args:
        model: a model with conv sites (wav2vec2, HuBERT, WavLM); shrunk in place.
        channels: conv site name -> indices of the channels to remove, as the site is now. A conv layer keeps
            at least one channel.

    Example:
        ```python
        >>> hfprune.remove_channels(model, {"feature_extractor.0.conv": [3, 17], "feature_extractor.6.conv": [0]})
        ```
    """
    all_sites = resolve_conv_sites(model)
    plan = []
    for name, indices in channels.items():
        site = _site(all_sites, name, ConvSite, "conv")
        removed = set(_checked_indices(name, "channel", indices, site.num_channels))
        if len(removed) == site.num_channels:
            raise PruningSpecError(f"{name}: cannot remove every channel of a conv layer; keep at least one")
        for norm in site.norms:
            try:
                norm_layout(norm)
            except TypeError as error:
                raise PruningSpecError(f"{name}: {error}") from error
        if removed:
            plan.append((site, [c for c in range(site.num_channels) if c not in removed]))
    if not plan:
        return
    record = ensure_record(model)
    for site, kept in plan:
        record.keep("channels", site.name, site.num_channels, kept)
        keep = torch.tensor(kept, dtype=torch.long)
        norms, consumers, is_last = site.norms, site.consumers, site.is_last  # resolved before shapes change
        keep_outputs(site.conv, keep)
        for consumer in consumers:
            keep_inputs(consumer, keep)
        for norm in norms:
            keep_norm_channels(norm, keep)
        setattr(site.layer, site.spec.out_attribute, len(kept))
        if not is_last:
            setattr(site.layers[site.layer_index + 1], site.spec.in_attribute, len(kept))
    sync_config(model)


def remove_layers(model: nn.Module, layers: Iterable[str]) -> None:
    """Remove whole layers (`"encoder.5"`, `"decoder.0"`). Later layers move down, as in the `ModuleList`.

    Example:
        ```python
        >>> hfprune.remove_layers(model, ["encoder.4", "encoder.5"])
        ```
    """
    adapter = prepared_adapter(model)
    stacks = {stack.spec.name: stack for stack in find_stacks(model, adapter)}
    removed: dict[str, set[int]] = {}
    for name in layers:
        stack_name, _, index = str(name).partition(".")
        if stack_name not in stacks or not index.isdigit():
            raise PruningSpecError(f"no layer named {name!r}; layers are named like '{next(iter(stacks))}.0'")
        size = len(stacks[stack_name].layers)
        if int(index) >= size:
            raise PruningSpecError(f"layer {name!r} is out of range; stack {stack_name!r} has {size} layers now")
        removed.setdefault(stack_name, set()).add(int(index))
    for stack_name, indices in removed.items():
        if len(indices) == len(stacks[stack_name].layers):
            raise PruningSpecError(f"cannot remove every layer of stack {stack_name!r}")
    if not removed:
        return
    record = ensure_record(model)
    config = model.config
    for stack_name, indices in removed.items():
        stack = stacks[stack_name]
        size = len(stack.layers)
        kept = [i for i in range(size) if i not in indices]
        record.keep_layers(stack_name, size, kept)
        if 0 in indices:
            _hand_over_first_layer_modules(stack, kept[0])
        for index in sorted(indices, reverse=True):
            del stack.layers[index]
        # Caches are indexed by layer_idx: renumber so the KV cache stays dense and in order.
        for position, layer in enumerate(stack.layers):
            for module in layer.modules():
                if getattr(module, "layer_idx", None) is not None:
                    module.layer_idx = position
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == size:
            config.layer_types = [layer_types[i] for i in kept]
    sync_config(model)


def _hand_over_first_layer_modules(stack, new_first: int) -> None:
    for path in stack.spec.first_layer_modules:
        stack.layers[new_first].set_submodule(path, stack.layers[0].get_submodule(path))


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and len(set(values)) == 1 and values[0] > 0 else None


def _config_valid(config) -> bool:
    """Whether the config passes its own validation (transformers 5 configs validate their fields)."""
    validate = getattr(config, "validate", None)
    if validate is None:
        return True
    try:
        validate()
    except Exception:  # huggingface_hub raises its own StrictDataclass errors, older versions ValueError
        return False
    return True


def sync_config(model: nn.Module) -> None:
    """Write into `model.config` every shape the family's config can express (uniform sizes only)."""
    config = model.config
    all_sites = list(resolve_sites(model).values())
    conv_sites = list(resolve_conv_sites(model).values())
    if conv_sites:
        setattr(config, conv_sites[0].spec.dims_field, [site.num_channels for site in conv_sites])
    for stack in find_stacks(model):
        spec = stack.spec
        setattr(config, spec.layers_field, len(stack.layers))
        mine = [s for s in all_sites if s.stack.spec is spec]
        ffn_width = _uniform([s.num_neurons for s in mine if isinstance(s, FfnSite)])
        if spec.ffn_field and ffn_width:
            setattr(config, spec.ffn_field, ffn_width)
        attention = [s for s in mine if isinstance(s, AttentionSite) and s.kind == "attention"]
        heads = _uniform([s.num_heads for s in attention])
        kv_heads = _uniform([s.num_kv_heads for s in attention])
        if spec.heads_field and heads and kv_heads:
            fields = (spec.heads_field, spec.kv_heads_field, spec.head_dim_field)
            before = [getattr(config, field, None) for field in fields]
            for field, value in zip(fields, (heads, kv_heads, attention[0].head_dim), strict=True):
                setattr(config, field, value)
            if not _config_valid(config):
                # transformers 5 refuses e.g. a Llama config whose hidden_size is not a multiple of its head count,
                # even with head_dim given, and would not save it. The counts then stay the dense ones, as for
                # non-uniform heads: the pruning record holds them and hfprune.from_pretrained rebuilds them.
                for field, value in zip(fields, before, strict=True):
                    setattr(config, field, value)
