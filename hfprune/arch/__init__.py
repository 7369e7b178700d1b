"""Architecture adapters: one file per family, each registering itself in `registry.ADAPTERS`."""

from . import bert, distilbert, gpt2, llama, wav2vec2, wavlm, whisper  # noqa: F401  (registration side effects)
from .base import STRUCTURE_OF_KIND
from .conv import ConvSite, resolve_conv_sites
from .registry import ADAPTERS, get_adapter, register_adapter, supported_model_types
from .sites import AttentionSite, FfnSite, Site, find_stacks, prepared_adapter, residual_source, resolve_sites

__all__ = [
    "ADAPTERS",
    "AttentionSite",
    "ConvSite",
    "FfnSite",
    "STRUCTURE_OF_KIND",
    "Site",
    "find_stacks",
    "get_adapter",
    "prepared_adapter",
    "register_adapter",
    "resolve_conv_sites",
    "residual_source",
    "resolve_sites",
    "supported_model_types",
]
