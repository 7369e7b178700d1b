"""Model families, described: one adapter per family, each registering itself by `config.model_type`.

An adapter only says where a family keeps its attention and FFN linears, how many heads and KV heads they hold,
and which module attributes and config fields follow their shapes. Nothing here touches a live model's weights:
the layers above (`hfprune.core` first) act on these descriptions, so adding a family is one small file and
no `if` anywhere else. This layer imports nothing of hfprune but `hfprune.errors`.
"""

from . import bert, distilbert, gpt2, llama, wav2vec2, wavlm, whisper  # noqa: F401  (registration side effects)
from .base import STRUCTURE_OF_KIND, Adapter, AttentionSpec, ConvSpec, FfnSpec, HiddenSpec, StackSpec
from .registry import ADAPTERS, get_adapter, register_adapter, supported_model_types

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AttentionSpec",
    "ConvSpec",
    "FfnSpec",
    "HiddenSpec",
    "STRUCTURE_OF_KIND",
    "StackSpec",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]
