"""hfprune: structured pruning for Hugging Face transformers that physically shrinks the model."""

from .arch import register_adapter, supported_model_types  # noqa: E402
from .checkpoint import from_pretrained, save_pretrained  # noqa: E402
from .core.masks import SoftMasks  # noqa: E402
from .core.surgery import remove_channels, remove_heads, remove_layers, remove_neurons, sites  # noqa: E402
from .cost.flops import ModelCount, SiteCount, count  # noqa: E402
from .errors import CalibrationError, CheckpointError, HfpruneError, PruningSpecError, UnsupportedModelError  # noqa: E402
from .publish.hub import push_to_hub  # noqa: E402
from .publish.report import PruningReport  # noqa: E402
from .recipe import Recipe, RecipeError  # noqa: E402
from .sparsity.semi_structured import to_semi_structured  # noqa: E402
from .sparsity.targets import weight_sparsity  # noqa: E402
from .structured.criteria import CRITERIA, register_criterion  # noqa: E402
from .structured.prune import prune  # noqa: E402
from .training.callback import PruningCallback  # noqa: E402
from .training.distill import Distiller  # noqa: E402
from .version import __version__

__all__ = [
    "CRITERIA",
    "CalibrationError",
    "CheckpointError",
    "Distiller",
    "PruningCallback",
    "PruningReport",
    "Recipe",
    "RecipeError",
    "HfpruneError",
    "ModelCount",
    "PruningSpecError",
    "SiteCount",
    "SoftMasks",
    "UnsupportedModelError",
    "count",
    "prune",
    "push_to_hub",
    "register_criterion",
    "from_pretrained",
    "register_adapter",
    "remove_channels",
    "remove_heads",
    "remove_layers",
    "remove_neurons",
    "save_pretrained",
    "sites",
    "supported_model_types",
    "to_semi_structured",
    "weight_sparsity",
]
