"""Resolving an adapter's description against a live model: the sites of a model, as they are now.

A site is computed fresh from the model each time it is asked for, so it always reflects the current shapes
(after surgery, after reload). Head and neuron counts are read from the weights, never cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..arch.base import Adapter, AttentionSpec, FfnSpec, StackSpec
from ..arch.registry import get_adapter
from ..errors import UnsupportedModelError
from .linear import out_features
from .modules import EmptyAttention


@dataclass
class Stack:
    """A resolved stack: its spec, the absolute path of its `ModuleList`, and the list itself."""

    spec: StackSpec
    path: str
    layers: nn.ModuleList


@dataclass
class AttentionSite:
    """One attention block of one layer, resolved against `root`."""

    name: str
    kind: str
    stack: Stack
    layer_index: int
    spec: AttentionSpec
    root: nn.Module

    @property
    def layer_path(self) -> str:
        return f"{self.stack.path}.{self.layer_index}"

    @property
    def module_path(self) -> str:
        return f"{self.layer_path}.{self.spec.module}"

    def _get(self, path: str) -> nn.Module:
        return self.root.get_submodule(path)

    @property
    def module(self) -> nn.Module:
        return self._get(self.module_path)

    @property
    def is_empty(self) -> bool:
        return isinstance(self.module, EmptyAttention)

    @property
    def q(self) -> nn.Module:
        return self._get(f"{self.module_path}.{self.spec.q}")

    @property
    def k(self) -> nn.Module:
        return self._get(f"{self.module_path}.{self.spec.k}")

    @property
    def v(self) -> nn.Module:
        return self._get(f"{self.module_path}.{self.spec.v}")

    @property
    def o_path(self) -> str:
        return f"{self.layer_path}.{self.spec.o}"

    @property
    def o(self) -> nn.Module:
        return self._get(self.o_path)

    @property
    def o_inside(self) -> bool:
        """Whether the output projection is a child of the attention module (Llama) or beside it (BERT)."""
        return self.spec.o.startswith(self.spec.module + ".")

    @property
    def head_dim(self) -> int:
        module = self.module
        return module.head_dim if isinstance(module, EmptyAttention) else getattr(module, self.spec.head_dim_attr)

    @property
    def num_heads(self) -> int:
        if self.is_empty:
            return 0
        width = out_features(self.q)
        if self.spec.fused_qkv:
            return width // 3 // self.head_dim
        return width // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        if self.is_empty:
            return 0
        if self.spec.fused_qkv:
            return self.num_heads
        return out_features(self.k) // self.head_dim


@dataclass
class FfnSite:
    """The feed-forward block of one layer, resolved against `root`."""

    name: str
    stack: Stack
    layer_index: int
    spec: FfnSpec
    root: nn.Module
    kind: str = "ffn"

    @property
    def layer_path(self) -> str:
        return f"{self.stack.path}.{self.layer_index}"

    @property
    def inputs(self) -> list[nn.Module]:
        return [self.root.get_submodule(f"{self.layer_path}.{p}") for p in self.spec.inputs]

    @property
    def output(self) -> nn.Module:
        return self.root.get_submodule(f"{self.layer_path}.{self.spec.output}")

    @property
    def num_neurons(self) -> int:
        return out_features(self.inputs[0])


Site = AttentionSite | FfnSite


def residual_source(site: Site) -> tuple[nn.Module, int]:
    """The module whose `index`-th input is the residual that `site`'s output is added to."""
    layer = site.root.get_submodule(site.layer_path)
    where = site.spec.residual(layer) if callable(site.spec.residual) else site.spec.residual
    path, _, index = where.rpartition(":")
    return (layer.get_submodule(path) if path else layer), int(index)


def find_stacks(model: nn.Module, adapter: Adapter | None = None) -> list[Stack]:
    """Find each of the adapter's stacks in `model` (a base model or any task model around it)."""
    adapter = adapter or prepared_adapter(model)
    module_lists = {name: m for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    stacks = []
    for spec in adapter.stacks:
        matches = [n for n in module_lists if n == spec.path or n.endswith("." + spec.path)]
        if len(matches) > 1:
            raise UnsupportedModelError(f"found several `{spec.path}` layer lists in the model: {matches}")
        if matches:
            stacks.append(Stack(spec, matches[0], module_lists[matches[0]]))
    if not stacks:
        wanted = [s.path for s in adapter.stacks]
        raise UnsupportedModelError(f"no transformer layers found in {type(model).__name__}: looked for {wanted}")
    return stacks


def _has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def resolve_sites(model: nn.Module) -> dict[str, Site]:
    """All sites of `model`, in model order, keyed by their stable names (`"encoder.0.attention"`)."""
    sites: dict[str, Site] = {}
    for stack in find_stacks(model):
        for index in range(len(stack.layers)):
            layer_path = f"{stack.path}.{index}"
            for spec in stack.spec.attention:
                if spec.optional and not _has(model, f"{layer_path}.{spec.module}"):
                    continue
                name = f"{stack.spec.name}.{index}.{spec.kind}"
                sites[name] = AttentionSite(name, spec.kind, stack, index, spec, model)
            name = f"{stack.spec.name}.{index}.ffn"
            sites[name] = FfnSite(name, stack, index, stack.spec.ffn, model)
    return sites


def prepared_adapter(model: nn.Module) -> Adapter:
    """The model's adapter, after letting it swap in prunable modules where the family needs that."""
    adapter = get_adapter(model)
    if adapter.prepare is not None:
        adapter.prepare(model)
    return adapter
