"""hfprune: structured pruning for Hugging Face transformers that physically shrinks the model."""

__version__ = "0.1.0"

from .arch import register_adapter, supported_model_types  # noqa: E402
from .callback import PruningCallback  # noqa: E402
from .distill import Distiller  # noqa: E402
from .errors import CalibrationError, CheckpointError, HfpruneError, PruningSpecError, UnsupportedModelError  # noqa: E402
from .flops import ModelCount, SiteCount, count  # noqa: E402
from .hub import push_to_hub  # noqa: E402
from .importance import CRITERIA, register_criterion  # noqa: E402
from .io import from_pretrained, save_pretrained  # noqa: E402
from .masks import SoftMasks  # noqa: E402
from .prune import prune  # noqa: E402
from .recipe import Recipe, RecipeError  # noqa: E402
from .report import PruningReport  # noqa: E402
from .semi_structured import to_semi_structured  # noqa: E402
from .sparsity import weight_sparsity  # noqa: E402
from .surgery import remove_channels, remove_heads, remove_layers, remove_neurons, sites  # noqa: E402

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
