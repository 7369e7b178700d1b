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

import fnmatch
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError
from .registry import CRITERIA
from .settings import DistillSettings, ScheduleSettings, Target, WeightSettings
from .settings import help_field as _help

STRUCTURES = ("heads", "neurons", "channels", "layers", "hidden", "weights")
# The nested settings: recipe field -> its typed class (read from, and written back as, mappings).
_SETTINGS = {"target": Target, "weights": WeightSettings, "distill": DistillSettings, "schedule": ScheduleSettings}


@dataclass
class Recipe:
    """A pruning recipe. Every field has a help text: `Recipe.help()` prints them."""

    target: Target = _help(
        "Budget. One fraction to keep, of the prunable FLOPs (`flops`, attention + FFN at the calibration data's "
        "mean length; for encoder-decoders, encoder + decoder per utterance; plus the conv feature encoder and "
        "feature projection when `channels` are pruned), of all parameters (`params`), or of the forward pass's "
        "measured time on this machine (`latency`, at `latency_batch_size`; one-shot `prune` only; encoder-decoders "
        "are timed in `generate()`, decoding `seq_len` tokens), in (0, 1]; "
        "or absolute kept counts `heads` and/or `neurons` over the whole model. See `hfprune.settings.Target`.",
        default_factory=lambda: Target(flops=0.6),
    )
    structures: list = _help(
        "What may be removed: any of heads, neurons, channels, layers, hidden, weights. `channels` are the output "
        "channels of a speech model's conv feature encoder (wav2vec2, HuBERT, WavLM; DPHuBERT). `hidden` narrows the "
        "residual stream (the hidden size, uniform across layers) as NVIDIA Minitron does for width: channels are "
        "scored by the mean magnitude of every hidden-size norm's outputs on the calibration data, and the largest "
        "hidden size (a multiple of `round_hidden`) that meets a flops, params or nonembedding_params target is "
        "kept; alone, or with heads and/or neurons in one budget (a few hidden sizes are tried, see "
        "`hidden_candidates`, and the one whose plan stays closest to the dense model wins). `layers` removes whole "
        "layers by block importance (ShortGPT); with heads/neurons, the number of layers removed is chosen with "
        "them in one budget (the depth whose plan stays closest to the dense model). `weights` sets single "
        "weights to zero (see `weights`) after any structure was removed; `target` and `criterion` do not apply to it.",
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
    round_hidden: int = _help(
        "With structures `hidden`: the kept hidden size is a multiple of this (fast matmuls; Llama-family configs "
        "also need a multiple of num_attention_heads, which is added to it); 1 = none.",
        64,
    )
    hidden_candidates: int = _help(
        "With structures `hidden` and heads/neurons: how many hidden sizes are tried, the full width included, "
        "evenly spaced down to the widest that meets the target by itself (each costs a scoring pass, a search and "
        "a KL measurement on a narrowed copy of the model); >= 2.",
        4,
    )
    layer_balance: float = _help(
        "How far the search evens out importance between layers, in [0, 1]: each layer's scores are divided by its "
        "importance per unit of cost raised to this power. 0 is the plain global search (Kwon et al. 2022), which "
        "at tight budgets can nearly empty late layers; 1 gives every layer the same mean importance per FLOP. "
        "Gradient criteria (fisher) only.",
        0.0,
    )
    iterative_steps: int | None = _help(
        "One-shot `prune` only: reach the target in this many rounds of scoring and search, each round scoring the "
        "model with what the rounds before chose to remove masked (`hfprune/structured/iterative.py`), so what is "
        "kept adapts to what is gone; no training between rounds, one scoring pass each. Heads and neurons only. "
        "Measured with 3 rounds: the calibration KL to the dense model halves, but held-out accuracy does not follow "
        "(MiniLM, 3 tasks x 2 budgets x 2 draws: -0.3 points on average; Whisper tiny.en at 80% FLOPs, 3 draws: "
        "WER 26.6 -> 25.8), so the default is 1.",
        None,
    )
    gqa: str = _help(
        "For GQA attention: `heads` removes the same number of query heads from every KV group; `groups` "
        "removes whole KV groups.",
        "heads",
    )
    rearrange: bool | None = _help(
        "Mask rearrangement (Kwon et al. 2022): within each layer, swap kept/removed units to reduce the "
        "second-order loss estimate. Gradient criteria only. Default: on (off for Whisper one-shot).",
        None,
    )
    tune: bool | None = _help(
        "Mask tuning (Kwon et al. 2022): per layer, least-squares scales on kept heads/neurons so each layer's "
        "output matches the dense model's; folded into the weights. Used when `reconstruct` is off. Default: on "
        "(off for Whisper one-shot).",
        None,
    )
    reconstruct: bool | None = _help(
        "Weight reconstruction: per layer, a ridge-regression refit of the output projection's weights and bias "
        "on the kept heads/neurons so each layer's output matches the dense model's (ZipLM-style layer-wise "
        "reconstruction; more freedom than `tune`, which it replaces). Needs calibration data (no labels). On the "
        "three-task benchmark (scripts/benchmarks/bench.py), without retraining, it kept 1.4 points more accuracy "
        "than mask tuning at 60% FLOPs and 5.5 more at 40% (means over tasks and draws); after a recovery epoch "
        "the two were within 0.4 points. Default: on (Whisper one-shot: on, with tuning and rearrangement off; "
        "scripts/benchmarks/bench_speech.py).",
        None,
    )
    add_bias: bool = _help(
        "With `reconstruct`: families built without biases get zero biases on their projections where the config "
        "can express them (Llama's `attention_bias`, `mlp_bias`), and the refit fits the output projection's "
        "bias too (FLAP's bias compensation): an offset absorbs the mean of what the removed units added. The "
        "result still loads with plain `from_pretrained`. Refused for families whose config cannot say it.",
        False,
    )
    sites: list | None = _help(
        "Prune only these sites: names or name prefixes (e.g. [encoder]), or shell patterns "
        "(e.g. ['decoder.*.ffn'], see `hfprune.sites(model)` for the names). With `layers`: stack names or layer "
        "names (`decoder`, `decoder.2`). Default: all, except for families whose one-shot pruning measurably "
        "cannot touch a structure (Whisper: not the encoder's heads); ['*'] is every site.",
        None,
    )
    distill: DistillSettings | None = _help(
        "PruningCallback only: distil from the dense model, {alpha: 0.5, temperature: 2.0, hidden: 0.0} "
        "(weight of the KL term, softmax temperature, weight of hidden-state MSE). Default: those values, a frozen "
        "copy of the model at train begin teaching; {alpha: 0} trains on the task loss alone (no teacher, no copy).",
        None,
    )
    weights: WeightSettings | None = _help(
        "With structures `weights` (the defaults when not given): {sparsity: 0.5, pattern: unstructured | 'N:M', "
        "criterion: magnitude | wanda | sparsegpt, scope: layer | global, block_size: 128}. `N:M` zeroes N of "
        "every M consecutive inputs ('2:4' for sparse tensor cores) and implies the sparsity; `global` (magnitude "
        "only) uses one threshold over all layers; block_size is SparseGPT's column block.",
        None,
    )
    schedule: ScheduleSettings | None = _help(
        "PruningCallback only: {type: oneshot|cubic, start, end, every, shrink}; steps, or fractions of training as "
        "floats. `shrink`: remove the pruned units physically after that step (the rest of training runs on the "
        "small model; single process), instead of at train end. Default: cubic from 0.1 to 0.7 of training, "
        "re-pruning every 10 steps.",
        None,
    )

    def selects(self, name: str) -> bool:
        """Whether `sites` lets the site (or layer) `name` be pruned: all do when `sites` is not given."""
        if self.sites is None:
            return True
        return any(fnmatch.fnmatchcase(name, p) if any(c in p for c in "*?[") else name.startswith(p)
                   for p in self.sites)

    def __setattr__(self, name: str, value: Any) -> None:
        # Nested settings are typed whichever way they arrive: built, loaded, `replace`d or assigned later.
        if name in _SETTINGS and (value is not None or name == "target"):
            value = _SETTINGS[name].from_value(value)
        super().__setattr__(name, value)

    def __post_init__(self):
        for f in fields(self):
            if f.name not in _SETTINGS:
                _check_type(f.name, getattr(self, f.name), f.type)
        bad = [s for s in self.structures if s not in STRUCTURES]
        if bad or not self.structures:
            raise RecipeError(f"structures must be a non-empty list of {STRUCTURES}; got {self.structures}")
        if "layers" in self.structures and "channels" in self.structures:
            raise RecipeError("structures: `layers` cannot be combined with `channels` yet")
        if "layers" in self.structures and self.target.metric in ("heads", "neurons"):
            raise RecipeError("structures: `layers` needs a fraction target (flops, params, nonembedding_params or "
                              f"latency), not kept counts {self.target.to_dict()}")
        self._check_hidden()
        self._check_weights()
        if self.add_bias and self.reconstruct is False:
            raise RecipeError("add_bias fits a bias in the weight reconstruction: set reconstruct: true as well")
        CRITERIA.check(self.criterion, also=("movement",))
        if self.gqa not in ("heads", "groups"):
            raise RecipeError(f"gqa must be 'heads' or 'groups', got {self.gqa!r}")
        for name in ("num_samples", "round_neurons", "round_channels", "round_hidden", "min_channels",
                     "latency_batch_size"):
            if getattr(self, name) < 1:
                why = "; a conv layer with no channels would cut the model in two" if name == "min_channels" else ""
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}{why}")
        if not 0.0 <= self.layer_balance <= 1.0:
            raise RecipeError(f"layer_balance must be in [0, 1], got {self.layer_balance}")
        if self.hidden_candidates < 2:
            raise RecipeError(f"hidden_candidates must be >= 2 (the full width and a narrower one), got "
                              f"{self.hidden_candidates}")
        if self.iterative_steps is not None:
            if self.iterative_steps < 1:
                raise RecipeError(f"iterative_steps must be >= 1, got {self.iterative_steps}")
            other = [s for s in self.structures if s not in ("heads", "neurons", "weights")]
            if self.iterative_steps > 1 and other:
                raise RecipeError(f"iterative_steps > 1 re-scores heads and neurons only; not with structures {other} "
                                  "yet (set iterative_steps: 1)")
        for name in ("min_heads", "min_neurons"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("seq_len", "encoder_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")

    def _check_hidden(self) -> None:
        if "hidden" not in self.structures:
            return
        others = [s for s in self.structures if s not in ("hidden", "heads", "neurons", "weights")]
        if others:
            raise RecipeError(f"structures: `hidden` cannot be combined with {others} yet; prune the hidden size alone "
                              "or with heads and/or neurons (weights may follow)")
        if self.target.metric not in ("flops", "params", "nonembedding_params"):
            raise RecipeError("structures: `hidden` needs a flops, params or nonembedding_params fraction target, not "
                              f"{self.target.to_dict()}")

    def _check_weights(self) -> None:
        if "weights" not in self.structures:
            if self.weights is not None:
                raise RecipeError("`weights` settings are given but structures lacks `weights`; add it")
            return
        if self.weights is None:
            self.weights = WeightSettings()  # the defaults, filled in: what was run is what gets recorded
        n_m = self.weights.n_m
        if n_m and "neurons" in self.structures and self.round_neurons % n_m[1]:
            raise RecipeError(
                f"round_neurons {self.round_neurons} must be a multiple of M in weights.pattern "
                f"{self.weights.pattern!r}, so that every kept FFN width still tiles into groups of M"
            )

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
        """The recipe as the mapping a YAML/JSON recipe file holds."""
        return {
            f.name: getattr(self, f.name).to_dict() if f.name in _SETTINGS and getattr(self, f.name) is not None
            else getattr(self, f.name)
            for f in fields(self)
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def help(cls) -> str:
        lines = [f"{f.name}: {f.metadata['help']}" for f in fields(cls)]
        return "\n".join(lines + [settings.help() for settings in _SETTINGS.values()])


_TYPES = {"list": list, "str": str, "int": int, "float": (float, int), "bool": bool, "int | None": (int, type(None)),
          "list | None": (list, type(None)), "bool | None": (bool, type(None))}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    expected = _TYPES[annotation if isinstance(annotation, str) else annotation.__name__]
    wrong_bool = isinstance(value, bool) and expected in (int, (int, type(None)), (float, int))
    if wrong_bool or not isinstance(value, expected):
        raise RecipeError(f"recipe field {name!r} must be {annotation}, got {type(value).__name__} {value!r}")
