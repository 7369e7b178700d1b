"""`Recipe`: what to prune, to which budget, with which criterion. YAML and JSON load into the same class.

Example (`recipes/bert-heads-ffn-fisher.yaml`):
```yaml
target: {flops: 0.6}          # keep 60% of the attention + FFN FLOPs
structures: [heads, neurons]
criterion: fisher
num_samples: 512
```
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import HfpruneError

TARGET_FRACTIONS = ("flops", "params", "latency")
TARGET_COUNTS = ("heads", "neurons")
STRUCTURES = ("heads", "neurons", "channels", "layers", "weights")


class RecipeError(HfpruneError, ValueError):
    """A recipe with unknown, missing or ill-typed fields, or a budget that cannot be met."""


def _help(text: str, default: Any = MISSING, default_factory: Any = MISSING):
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class Recipe:
    """A pruning recipe. Every field has a help text: `Recipe.help()` prints them."""

    target: dict = _help(
        "Budget. One fraction to keep, of the prunable FLOPs (`flops`, attention + FFN at the calibration data's "
        "mean length; for encoder-decoders, encoder + decoder per utterance; plus the conv feature encoder and "
        "feature projection when `channels` are pruned), of all parameters (`params`), or of the forward pass's "
        "measured time on this machine (`latency`, at `latency_batch_size`; one-shot `prune` only), in (0, 1]; "
        "or absolute kept counts `heads` and/or `neurons` over the whole model.",
        default_factory=lambda: {"flops": 0.6},
    )
    structures: list = _help(
        "What may be removed: any of heads, neurons, channels, layers, weights. `channels` are the output channels "
        "of a speech model's conv feature encoder (wav2vec2, HuBERT, WavLM; DPHuBERT). `layers` removes whole "
        "layers by block "
        "importance (ShortGPT); with heads/neurons it is not supported yet. `weights` sets single weights to zero "
        "(see `weights`), after any structure was removed; `target` and `criterion` do not apply to it.",
        default_factory=lambda: ["heads", "neurons"],
    )
    criterion: str = _help(
        "Importance criterion: magnitude, activation, taylor or fisher; movement during training only.", "fisher"
    )
    num_samples: int = _help("At most this many calibration examples are used.", 512)
    seq_len: int | None = _help(
        "Sequence length for the FLOPs budget; default: the calibration data's mean real length. For "
        "encoder-decoder models (Whisper) the decoder's length: the mean transcript length in tokens.",
        None,
    )
    encoder_seq_len: int | None = _help(
        "Encoder-decoder models only: the encoder's length for the FLOPs budget (also the keys of "
        "cross-attention); default: that of the calibration inputs (Whisper: 1500 frames for its 30 s input).",
        None,
    )
    latency_batch_size: int = _help(
        "With target.latency: sequences per timed forward pass (1: one request's latency; larger: batched "
        "serving). The timings use random inputs of `seq_len` tokens (frames for speech) on the model's device.",
        1,
    )
    min_heads: int = _help("Each attention site keeps at least this many heads (0 allows removing a block).", 0)
    min_neurons: int = _help("Each FFN keeps at least this many neurons.", 0)
    round_neurons: int = _help("Kept FFN widths are rounded to a multiple of this (fast matmuls); 1 = none.", 8)
    min_channels: int = _help(
        "Each conv layer keeps at least this many output channels (>= 1: a conv layer cannot lose them all).", 8
    )
    round_channels: int = _help("Kept conv widths are rounded to a multiple of this (fast convs); 1 = none.", 8)
    gqa: str = _help(
        "For GQA attention: `heads` removes the same number of query heads from every KV group; `groups` "
        "removes whole KV groups.",
        "heads",
    )
    rearrange: bool = _help(
        "Mask rearrangement (Kwon et al. 2022): within each layer, swap kept/removed units to reduce the "
        "second-order loss estimate. Gradient criteria only.",
        True,
    )
    tune: bool = _help(
        "Mask tuning (Kwon et al. 2022): per layer, least-squares scales on kept heads/neurons so each layer's "
        "output matches the dense model's; folded into the weights.",
        True,
    )
    reconstruct: bool = _help(
        "Weight reconstruction: per layer, a ridge-regression refit of the output projection's weights and bias "
        "on the kept heads/neurons so each layer's output matches the dense model's (ZipLM-style layer-wise "
        "reconstruction; more freedom than `tune`, which it replaces when both are on).",
        False,
    )
    sites: list | None = _help("Prune only sites whose name starts with one of these (e.g. [encoder]).", None)
    distill: dict | None = _help(
        "PruningCallback only: distil from the dense model, {alpha: 0.5, temperature: 2.0, hidden: 0.0} "
        "(weight of the KL term, softmax temperature, weight of hidden-state MSE).",
        None,
    )
    weights: dict | None = _help(
        "With structures `weights`: {sparsity: 0.5, pattern: unstructured | 'N:M', criterion: magnitude | wanda | "
        "sparsegpt, scope: layer | global, block_size: 128}. `N:M` zeroes N of every M consecutive inputs "
        "('2:4' for sparse tensor cores) and implies the sparsity; `global` (magnitude only) uses one threshold "
        "over all layers; block_size is SparseGPT's column block.",
        None,
    )
    schedule: dict | None = _help(
        "PruningCallback only: {type: oneshot|cubic, start, end, every, shrink}; steps, or fractions of training as "
        "floats. `shrink`: remove the pruned units physically after that step (the rest of training runs on the "
        "small model; single process), instead of at train end. Default: one-shot after the first step.",
        None,
    )

    def __post_init__(self):
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        self.target = dict(self.target)
        unknown = set(self.target) - set(TARGET_FRACTIONS + TARGET_COUNTS)
        if unknown:
            raise RecipeError(
                f"unknown target key(s) {sorted(unknown)}; use one of {TARGET_FRACTIONS} or counts {TARGET_COUNTS}"
            )
        fractions = [k for k in TARGET_FRACTIONS if k in self.target]
        counts = [k for k in TARGET_COUNTS if k in self.target]
        if len(fractions) > 1 or (fractions and counts) or not (fractions or counts):
            raise RecipeError(
                f"target must give exactly one of {TARGET_FRACTIONS}, or kept counts {TARGET_COUNTS}; got {self.target}"
            )
        for key in fractions:
            value = self.target[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise RecipeError(f"target.{key} must be a fraction in (0, 1], got {value!r}")
        for key in counts:
            value = self.target[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RecipeError(f"target.{key} must be a non-negative integer count, got {value!r}")
        bad = [s for s in self.structures if s not in STRUCTURES]
        if bad or not self.structures:
            raise RecipeError(f"structures must be a non-empty list of {STRUCTURES}; got {self.structures}")
        if "layers" in self.structures and {"heads", "neurons", "channels"} & set(self.structures):
            raise RecipeError("structures: `layers` cannot be combined with heads/neurons/channels yet; use it alone")
        self._check_weights()
        from .importance import CRITERIA

        if self.criterion not in CRITERIA and self.criterion != "movement":
            raise RecipeError(f"criterion {self.criterion!r} is unknown; available: {', '.join(sorted(CRITERIA))}")
        if self.gqa not in ("heads", "groups"):
            raise RecipeError(f"gqa must be 'heads' or 'groups', got {self.gqa!r}")
        for name in ("num_samples", "round_neurons", "round_channels", "min_channels", "latency_batch_size"):
            if getattr(self, name) < 1:
                why = "; a conv layer with no channels would cut the model in two" if name == "min_channels" else ""
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}{why}")
        for name in ("min_heads", "min_neurons"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.distill is not None:
            from .distill import distill_settings

            distill_settings(self.distill)
        for name in ("seq_len", "encoder_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")

    def _check_weights(self) -> None:
        if "weights" not in self.structures:
            if self.weights is not None:
                raise RecipeError("`weights` settings are given but structures lacks `weights`; add it")
            return
        from .sparsity import weight_settings

        settings = weight_settings(self.weights)
        if settings.n_m and "neurons" in self.structures and self.round_neurons % settings.n_m[1]:
            raise RecipeError(
                f"round_neurons {self.round_neurons} must be a multiple of M in weights.pattern {settings.pattern!r}, "
                "so that every kept FFN width still tiles into groups of M"
            )
        self.weights = settings.to_dict()  # defaults filled in: what was run is what gets recorded

    def weight_settings(self):
        """The validated `weights` settings (`hfprune.sparsity.WeightSettings`), or None without `weights`."""
        from .sparsity import weight_settings

        return weight_settings(self.weights) if "weights" in self.structures else None

    # ------------------------------------------------------------------------------------------ in and out

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a mapping of fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"unknown recipe key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        return cls._read(path, yaml.safe_load, yaml.YAMLError, "YAML")

    @classmethod
    def from_json(cls, path: str | Path) -> Recipe:
        return cls._read(path, json.loads, json.JSONDecodeError, "JSON")

    @classmethod
    def _read(cls, path, parse, error_type, language: str) -> Recipe:
        try:
            data = parse(Path(path).read_text())
        except error_type as error:
            raise RecipeError(f"{path} is not valid {language}: {error}") from error
        return cls.from_dict({} if data is None else data)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Load a `.yaml`/`.yml` or `.json` recipe."""
        if not Path(path).exists():
            raise RecipeError(f"recipe file {path} does not exist")
        return cls.from_json(path) if str(path).endswith(".json") else cls.from_yaml(path)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"{f.name}: {f.metadata['help']}" for f in fields(cls))


_TYPES = {"dict": dict, "list": list, "str": str, "int": int, "bool": bool, "int | None": (int, type(None)),
          "list | None": (list, type(None)), "dict | None": (dict, type(None))}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    expected = _TYPES[annotation if isinstance(annotation, str) else annotation.__name__]
    wrong_bool = isinstance(value, bool) and expected in (int, (int, type(None)))
    if wrong_bool or not isinstance(value, expected):
        raise RecipeError(f"recipe field {name!r} must be {annotation}, got {type(value).__name__} {value!r}")
