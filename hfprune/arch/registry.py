"""One registry, `config.model_type -> Adapter`; no if-chains over model types anywhere else."""

from __future__ import annotations

import torch.nn as nn

from ..errors import UnsupportedModelError
from .base import Adapter

ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Register `adapter` for each of its `model_types`; returns it, so a family file can end with this call."""
    for model_type in adapter.model_types:
        if model_type in ADAPTERS:
            raise ValueError(f"an adapter for model_type {model_type!r} is already registered")
        ADAPTERS[model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`'s family, or an error listing the supported families."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"hfprune does not support model_type {model_type!r} ({type(model).__name__}). "
            f"Supported: {', '.join(supported_model_types())}"
        )
    return ADAPTERS[model_type]
