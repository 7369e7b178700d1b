"""Hidden-size pruning: the residual stream's channels, resolved against a live model, and their removal.

One set of channels runs through the whole model: the embeddings write it, every layer's q/k/v and FFN inputs
read it, the attention and FFN output projections add to it, every norm over the hidden size normalises it, and
the head reads it. Keeping a channel therefore means keeping it everywhere at once (NVIDIA Minitron's
"embedding channels"); the sizes stay uniform across layers, so `config.hidden_size` can say the new size.

Where these modules are comes from the family's `HiddenSpec` (plus the sites' projections, which are the layers'
readers and writers). As with the sites, the stream is resolved fresh each time, and its width is read from the
weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..arch.base import HiddenSpec
from ..arch.registry import ADAPTERS
from ..errors import PruningSpecError
from .linear import keep_along, keep_inputs, keep_outputs
from .modules import BiasOnly
from .norms import keep_norm_channels, norm_layout
from .record import ensure_record
from .sites import AttentionSite, find_stacks, prepared_adapter, resolve_sites


@dataclass
class ResidualStream:
    """The modules of a model that hold the residual stream's channels, as the model is now.

    Attributes:
        spec: the family's description.
        embeddings: embeddings whose columns (weight dim 1) are the channels.
        readers: projections whose inputs are the channels (q/k/v, FFN inputs, pooler, head).
        writers: projections whose outputs are the channels (attention and FFN output projections).
        norms: norms over the hidden size, computed as `spec.norm_kind` says.
        attributes: `(module, attribute)` pairs that hold the hidden size.
        head_dim: the attention head size (written into the config where the family's config can carry it).
    """

    spec: HiddenSpec
    embeddings: list[nn.Module]
    readers: list[nn.Module]
    writers: list[nn.Module]
    norms: list[nn.Module]
    attributes: list[tuple[nn.Module, str]]
    head_dim: int | None

    @property
    def width(self) -> int:
        return self.embeddings[0].weight.shape[1]

    def tensors(self) -> list[tuple[torch.Tensor, int]]:
        """Every parameter indexed by channel, once (a tied LM head is the embedding's weight), with the dim that
        holds the channels: what one channel costs in parameters is the sum of `numel / shape[dim]`."""
        found: dict[int, tuple[torch.Tensor, int]] = {}

        def add(tensor, dim):
            if isinstance(tensor, nn.Parameter):
                found.setdefault(id(tensor), (tensor, dim))

        for embedding in self.embeddings:
            add(embedding.weight, 1)
        for reader in self.readers:
            add(reader.weight, reader.weight.dim() - 1)  # nn.Linear: (out, in)
        for writer in self.writers:
            if not isinstance(writer, BiasOnly):
                add(writer.weight, 0)
            add(writer.bias, 0)
        for norm in self.norms:
            add(getattr(norm, "weight", None), 0)
            add(getattr(norm, "bias", None), 0)
        return list(found.values())


def _describes(spec: HiddenSpec | None, model_type: str) -> bool:
    return spec is not None and (not spec.model_types or model_type in spec.model_types)


def supported_hidden_families() -> list[str]:
    """The `model_type`s whose adapter describes the residual stream."""
    return sorted(t for t, adapter in ADAPTERS.items() if _describes(adapter.hidden, t))


def _get(root: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        raise PruningSpecError(
            f"{type(root).__name__} has no {what} {path!r}, where the family's description puts one"
        ) from None


def _unique(modules: Iterable[nn.Module]) -> list[nn.Module]:
    return list({id(m): m for m in modules}.values())


def residual_stream(model: nn.Module) -> ResidualStream:
    """Resolve the family's `HiddenSpec` against `model` (a base model or a task model listed in `spec.heads`).

    Raises:
        `PruningSpecError`: the family or the task model's head is not described, or a layer has cross-attention
            (its keys and values read another model's stream).
    """
    adapter = prepared_adapter(model)
    spec = adapter.hidden
    model_type = model.config.model_type
    if not _describes(spec, model_type):
        raise PruningSpecError(
            f"hidden-size pruning is not described for model_type {model_type!r}; families that support it: "
            f"{', '.join(supported_hidden_families())}"
        )
    head_paths = spec.heads.get(type(model).__name__)
    if head_paths is None:
        raise PruningSpecError(
            f"hidden-size pruning of a {type(model).__name__} is not described (its head may read the hidden "
            f"states); classes it is described for: {', '.join(sorted(spec.heads))}"
        )
    base = getattr(model, "base_model", model)
    embeddings = [_get(base, path, "embedding") for path in spec.embeddings]
    norms = [_get(base, path, "norm") for path in spec.norms]
    readers = [m for m in (_find(base, path) for path in spec.readers) if m is not None]
    readers += [_get(model, path, "head") for path in head_paths]
    writers, attributes, head_dim = [], [], None
    for site in resolve_sites(model).values():
        if isinstance(site, AttentionSite):
            if site.kind == "cross_attention":
                raise PruningSpecError(
                    f"{site.name}: hidden-size pruning of models with cross-attention is not supported (its keys "
                    "and values read another stream)"
                )
            head_dim = head_dim or site.head_dim
            writers.append(site.o)
            if not site.is_empty:
                readers += [site.q, site.k, site.v]
        else:
            readers += site.inputs
            writers.append(site.output)
    for stack in find_stacks(model):
        for layer in stack.layers:
            norms += [_get(layer, path, "layer norm") for path in spec.layer_norms]
            attributes += [(_get(layer, path, "module"), name) for path, name in spec.attributes.items()]
    return ResidualStream(spec, embeddings, _unique(readers), _unique(writers), norms, attributes, head_dim)


def _find(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def hidden_multiple(model: nn.Module, spec: HiddenSpec) -> int:
    """What the hidden size must be a multiple of for the family's config to be valid (1: anything)."""
    return int(getattr(model.config, spec.multiple_of_field, 1) or 1) if spec.multiple_of_field else 1


def _kept(width: int, channels, keep) -> list[int]:
    """The kept channels (current indices, ascending) of a request given as channels to remove or to keep."""
    if (channels is None) == (keep is None):
        raise PruningSpecError("give either the channels to remove or `keep=` the channels to keep, not both")
    given = [int(i) for i in (keep if keep is not None else channels)]
    what = "keep" if keep is not None else "channels"
    bad = [i for i in given if not 0 <= i < width]
    if bad:
        raise PruningSpecError(f"hidden {what}: index {bad[0]} is out of range; the hidden size is {width} now")
    if len(set(given)) != len(given):
        raise PruningSpecError(f"hidden {what}: indices contain duplicates: {sorted(given)}")
    kept = sorted(given) if keep is not None else [c for c in range(width) if c not in set(given)]
    if not kept:
        raise PruningSpecError("hidden-size pruning must keep at least one channel; the request keeps none")
    return kept


@torch.no_grad()
def _keep_written(writer: nn.Module, index: torch.Tensor) -> None:
    if isinstance(writer, BiasOnly):  # an attention block that lost every head: its output is the bias alone
        if writer.bias is not None:
            keep_along(writer, "bias", 0, index)
        writer.out_features = len(index)
    else:
        keep_outputs(writer, index)


def remove_hidden_channels(
    model: nn.Module, channels: Iterable[int] | None = None, *, keep: Iterable[int] | None = None
) -> None:
    """Physically remove residual-stream channels: narrow the hidden size of the whole model.

    Every embedding loses the channels' columns, every projection reading the stream its inputs, every projection
    writing it its outputs, every norm over the hidden size its entries; the head's inputs follow (a head tied to
    the token embeddings stays tied). `config.hidden_size` (the family's `size_field`) gets the new size and, where
    the family's config can carry it, the head size is written explicitly, so a Llama-family checkpoint loads with
    plain `from_pretrained`; others reload through `hfprune.from_pretrained` (the record says what was removed).

    Args:
        model: a model whose family describes its residual stream (Llama, Mistral, Qwen2, BERT, RoBERTa,
            DistilBERT); shrunk in place.
        channels: indices of the channels to remove, as the model is now.
        keep: alternatively, the indices of the channels to keep (give one of the two).

    Example:
        ```python
        >>> hfprune.remove_hidden_channels(model, keep=range(0, 512))   # hidden size 576 -> 512
        ```
    """
    stream = residual_stream(model)
    width = stream.width
    kept = _kept(width, channels, keep)
    for norm in stream.norms:  # refused before any weight changes
        try:
            norm_layout(norm, stream.spec.norm_kind)
        except TypeError as error:
            raise PruningSpecError(f"hidden-size pruning: {error}") from error
    multiple = hidden_multiple(model, stream.spec)
    if len(kept) % multiple:
        raise PruningSpecError(
            f"{type(model.config).__name__} needs a hidden size that is a multiple of {stream.spec.multiple_of_field} "
            f"({multiple}), or transformers can neither save nor load it; this request keeps {len(kept)} channels"
        )
    if len(kept) == width:
        return
    ensure_record(model).keep_hidden(width, kept)
    index = torch.tensor(kept, dtype=torch.long)
    # A head sharing the token embedding's weight (tied LM head) must keep sharing the sliced one.
    tied = {id(r): e for r in stream.readers for e in stream.embeddings if r.weight is e.weight}
    for embedding in stream.embeddings:
        keep_along(embedding, "weight", 1, index)
        embedding.embedding_dim = len(kept)
    for reader in stream.readers:
        if id(reader) in tied:
            reader.weight = tied[id(reader)].weight
            reader.in_features = len(kept)
        else:
            keep_inputs(reader, index)
    for writer in stream.writers:
        _keep_written(writer, index)
    for norm in stream.norms:
        keep_norm_channels(norm, index, stream.spec.norm_kind)
    for module, attribute in stream.attributes:
        setattr(module, attribute, len(kept))
    setattr(model.config, stream.spec.size_field, len(kept))
    if stream.spec.head_dim_field and stream.head_dim:
        setattr(model.config, stream.spec.head_dim_field, stream.head_dim)
