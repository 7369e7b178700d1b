"""Resolving an adapter's `ConvSpec` against a live model: one site per conv layer, with prunable output channels.

Like the transformer sites, a conv site is computed fresh each time it is asked for, and its channel count is
read from the weights. Whatever reads a conv layer's channels (the next conv, or the feature projection behind
its norm) is the site's *consumer*; removing a channel slices the conv's outputs, the norms over its channels
and the consumer's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..arch.base import ConvSpec
from ..arch.registry import get_adapter
from ..errors import UnsupportedModelError


def _find(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


@dataclass
class ConvSite:
    """Conv layer `layer_index` of the conv stack at `stack_path` (absolute), resolved against `root`."""

    name: str
    spec: ConvSpec
    stack_path: str
    layer_index: int
    root: nn.Module
    kind: str = "conv"

    @property
    def layers(self) -> nn.ModuleList:
        return self.root.get_submodule(self.stack_path)

    @property
    def layer(self) -> nn.Module:
        return self.layers[self.layer_index]

    @property
    def is_last(self) -> bool:
        return self.layer_index == len(self.layers) - 1

    @property
    def conv(self) -> nn.Conv1d:
        return self.layer.get_submodule(self.spec.conv)

    @property
    def norm(self) -> nn.Module | None:
        """The layer's own norm over its channels, if it has one."""
        return _find(self.layer, self.spec.norm)

    @property
    def _outer_prefix(self) -> str:
        # `output` and `output_norm` live beside the conv stack's parent (the feature encoder).
        return self.stack_path[: -len(self.spec.path)]

    @property
    def consumer(self) -> nn.Module:
        """The module whose inputs are this layer's channels: the next conv, or the feature projection."""
        if not self.is_last:
            return self.layers[self.layer_index + 1].get_submodule(self.spec.conv)
        return self.root.get_submodule(self._outer_prefix + self.spec.output)

    @property
    def consumers(self) -> list[nn.Module]:
        """The consumer and, for the last layer, the model's other readers of its channels."""
        if not self.is_last:
            return [self.consumer]
        readers = [_find(self.root, path) for path in self.spec.readers]
        return [self.consumer, *(r for r in readers if r is not None)]

    @property
    def consumer_norm(self) -> nn.Module | None:
        """A norm over this layer's channels on the way to the consumer (the last layer's feature-projection norm)."""
        return _find(self.root, self._outer_prefix + self.spec.output_norm) if self.is_last else None

    @property
    def norms(self) -> list[nn.Module]:
        return [n for n in (self.norm, self.consumer_norm) if n is not None]

    @property
    def num_channels(self) -> int:
        return self.conv.weight.shape[0]


def resolve_conv_sites(model: nn.Module) -> dict[str, ConvSite]:
    """The conv sites of `model` in model order (`"feature_extractor.0.conv"`, ...); empty for families without a
    prunable conv stack."""
    spec = get_adapter(model).conv
    if spec is None:
        return {}
    matches = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and (n == spec.path or n.endswith("." + spec.path))
    ]
    if len(matches) > 1:
        raise UnsupportedModelError(f"found several `{spec.path}` conv stacks in the model: {matches}")
    if not matches:
        return {}  # e.g. a model whose task wrapper holds no feature encoder
    layers = model.get_submodule(matches[0])
    names = [f"{spec.name}.{i}.conv" for i in range(len(layers))]
    return {name: ConvSite(name, spec, matches[0], i, model) for i, name in enumerate(names)}
