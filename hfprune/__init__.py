"""hfprune: structured pruning for Hugging Face transformers that physically shrinks the model.

Every name a user or an extension needs is importable from here; the subpackages are layered (see README):
`arch` describes families, `core` does surgery, `checkpoint` saves and loads, `cost` counts and times,
`calibration` prepares data, `publish` reports and shares, `sparsity` zeroes weights, `structured` prunes units
one-shot, `training` prunes while fine-tuning.
"""

from .arch import (
    Adapter,
    AttentionSpec,
    ConvSpec,
    FfnSpec,
    HiddenSpec,
    StackSpec,
    register_adapter,
    supported_model_types,
)
from .calibration.audio import audio_batches
from .calibration.data import load_dataset, text_batches
from .checkpoint import ExportError, export_gguf, from_pretrained, save_pretrained
from .core.hidden import remove_hidden_channels
from .core.masks import SoftMasks
from .core.surgery import remove_channels, remove_heads, remove_layers, remove_neurons, sites
from .cost.flops import ModelCount, SiteCount, count
from .cost.latency import dummy_inputs, measure_latency
from .errors import (
    CalibrationError,
    CheckpointError,
    DataError,
    HfpruneError,
    HubError,
    PruningSpecError,
    RecipeError,
    UnsupportedModelError,
    UnsupportedTrainingError,
)
from .publish.hub import push_to_hub
from .publish.report import PruningReport
from .recipe import Recipe
from .registry import CRITERIA, WEIGHT_CRITERIA
from .settings import DistillSettings, ScheduleSettings, Target, WeightSettings
from .sparsity.criteria import register_weight_criterion
from .sparsity.semi_structured import to_semi_structured
from .sparsity.sparsify import sparsify
from .sparsity.targets import weight_sparsity, weight_targets
from .structured.criteria import Scores, register_criterion
from .structured.offload import prune_checkpoint
from .structured.prune import prune
from .training.callback import PruningCallback
from .training.distill import Distiller
from .version import __version__

__all__ = [
    "CRITERIA",
    "WEIGHT_CRITERIA",
    "Adapter",
    "AttentionSpec",
    "CalibrationError",
    "CheckpointError",
    "ConvSpec",
    "DataError",
    "DistillSettings",
    "Distiller",
    "ExportError",
    "FfnSpec",
    "HfpruneError",
    "HiddenSpec",
    "HubError",
    "ModelCount",
    "PruningCallback",
    "PruningReport",
    "PruningSpecError",
    "Recipe",
    "RecipeError",
    "ScheduleSettings",
    "Scores",
    "SiteCount",
    "SoftMasks",
    "StackSpec",
    "Target",
    "UnsupportedModelError",
    "UnsupportedTrainingError",
    "WeightSettings",
    "__version__",
    "audio_batches",
    "count",
    "dummy_inputs",
    "export_gguf",
    "from_pretrained",
    "load_dataset",
    "measure_latency",
    "prune",
    "prune_checkpoint",
    "push_to_hub",
    "register_adapter",
    "register_criterion",
    "register_weight_criterion",
    "remove_channels",
    "remove_heads",
    "remove_hidden_channels",
    "remove_layers",
    "remove_neurons",
    "save_pretrained",
    "sites",
    "sparsify",
    "supported_model_types",
    "text_batches",
    "to_semi_structured",
    "weight_sparsity",
    "weight_targets",
]
