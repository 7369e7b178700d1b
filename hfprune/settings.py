"""The recipe's nested settings, typed: `target`, `weights`, `distill`, `schedule`.

Each is a frozen dataclass with a help text per field, validated when it is built, so a bad setting fails when
the `Recipe` is made, naming the field and what it allows, and not later inside a run. They read from (and write
back to) the same mappings a YAML or JSON recipe holds, e.g. `target: {flops: 0.6}` or
`schedule: {type: cubic, end: 0.7}`.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import RecipeError
from .registry import WEIGHT_CRITERIA

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def help_field(text: str, default: Any = MISSING, default_factory: Any = MISSING):
    """A dataclass field with a help text (read by `Recipe.help()` and the settings' docs)."""
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Settings:
    """Shared reading and writing of one nested recipe setting (`NAME` is its recipe field)."""

    NAME = ""

    @classmethod
    def from_value(cls, value: Any):
        """Build from a recipe's mapping (an instance passes through)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"{cls.NAME} must be a mapping of {cls.keys()}, got {type(value).__name__} {value!r}")
        unknown = sorted(set(value) - set(cls.keys()))
        if unknown:
            raise RecipeError(cls._unknown_message(unknown))
        return cls(**value)

    @classmethod
    def _unknown_message(cls, unknown: list[str]) -> str:
        return f"unknown {cls.NAME} key(s) {unknown}; known: {cls.keys()}"

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        """The mapping a recipe file holds; settings left unset (None) are left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __str__(self) -> str:
        return str(self.to_dict())

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"{cls.NAME}.{f.name}: {f.metadata['help']}" for f in fields(cls))


# -------------------------------------------------------------------------------------------------- target

TARGET_FRACTIONS = ("flops", "params", "nonembedding_params", "latency")
TARGET_COUNTS = ("heads", "neurons")


@dataclass(frozen=True)
class Target(_Settings):
    """The budget: one fraction to keep, or absolute kept counts of heads and/or neurons over the whole model."""

    NAME = "target"

    flops: float | None = help_field(
        "Fraction of the prunable FLOPs to keep: attention + FFN at the calibration data's mean length (for "
        "encoder-decoders, encoder + decoder per utterance), plus the conv feature encoder and feature projection "
        "when `channels` are pruned.",
        None,
    )
    params: float | None = help_field("Fraction of all parameters to keep (embeddings and LM head included).", None)
    nonembedding_params: float | None = help_field(
        "Fraction of the parameters outside the token embeddings and the LM head to keep (how LLM pruning papers "
        "count: the vocabulary's share, 21 % of SmolLM2-135M, is not pruned and would dilute a `params` target).",
        None,
    )
    latency: float | None = help_field(
        "Fraction of the measured time on this machine to keep (at `latency_batch_size`; one-shot `prune` only): "
        "of a forward pass, or for encoder-decoders (Whisper) of a greedy `generate()` decoding `seq_len` tokens.",
        None,
    )
    heads: int | None = help_field("Attention heads to keep over the whole model (a count).", None)
    neurons: int | None = help_field("FFN neurons to keep over the whole model (a count).", None)

    @classmethod
    def _unknown_message(cls, unknown: list[str]) -> str:
        return f"unknown target key(s) {unknown}; use one of {TARGET_FRACTIONS} or counts {TARGET_COUNTS}"

    def __post_init__(self):
        fractions = [k for k in TARGET_FRACTIONS if getattr(self, k) is not None]
        counts = [k for k in TARGET_COUNTS if getattr(self, k) is not None]
        if len(fractions) > 1 or (fractions and counts) or not (fractions or counts):
            raise RecipeError(
                f"target must give exactly one of {TARGET_FRACTIONS}, or kept counts {TARGET_COUNTS}; "
                f"got {self.to_dict()}"
            )
        for key in fractions:
            value = getattr(self, key)
            if not _is_number(value) or not 0 < value <= 1:
                raise RecipeError(f"target.{key} must be a fraction in (0, 1], got {value!r}")
        for key in counts:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RecipeError(f"target.{key} must be a non-negative integer count, got {value!r}")

    @property
    def metric(self) -> str:
        """The quantity the budget is on: the fraction's name, else the first count given."""
        return next(k for k in TARGET_FRACTIONS + TARGET_COUNTS if getattr(self, k) is not None)

    def get(self, key: str) -> float | int | None:
        """The value for `key` (flops, params, latency, heads, neurons), None when not given (or not a target key,
        e.g. a structure that takes no count such as `channels`)."""
        return getattr(self, key) if key in self.keys() else None


# ------------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightSettings(_Settings):
    """Single weights set to zero (structures `weights`); defaults are filled in, so what ran is what is recorded."""

    NAME = "weights"

    sparsity: float | None = help_field(
        "Fraction of each targeted layer's weights set to zero, in [0, 1); default 0.5, or implied by an N:M "
        "pattern.",
        None,
    )
    pattern: str = help_field(
        "`unstructured`, or 'N:M': N zeros in every M consecutive inputs ('2:4' for sparse tensor cores).",
        "unstructured",
    )
    criterion: str = help_field("magnitude, wanda or sparsegpt (or one registered by name).", "magnitude")
    scope: str = help_field(
        "`layer` (each layer at `sparsity`) or `global` (one threshold over all layers; magnitude only).", "layer"
    )
    block_size: int | None = help_field(
        "SparseGPT's column block; default the largest multiple of M up to 128 (128 for unstructured).", None
    )
    sequential: bool = help_field(
        "Wanda/SparseGPT: False (default) observes all of a layer's linears in one pass, as Wanda's and "
        "llm-compressor's implementations do; True calibrates each group of linears that read one input (q/k/v, "
        "o, gate/up, down) after the groups before it are pruned ('true sequential', one partial pass per group, "
        "~1.6x the time). On SmolLM2-135M, Wanda 50 %: one pass 98 s, perplexity 42.59; sequential 160 s, 42.89.",
        False,
    )

    def __post_init__(self):
        match = _NM.match(self.pattern) if isinstance(self.pattern, str) else None
        if self.pattern != "unstructured" and not (match and 0 < int(match.group(1)) < int(match.group(2))):
            raise RecipeError(
                "weights.pattern must be 'unstructured' or 'N:M' (N zeros in every M consecutive inputs, 0 < N < M, "
                f"e.g. '2:4'), got {self.pattern!r}"
            )
        implied = int(match.group(1)) / int(match.group(2)) if match else None
        sparsity = self.sparsity if self.sparsity is not None else (implied if implied is not None else 0.5)
        if not _is_number(sparsity) or not 0 <= sparsity < 1:
            raise RecipeError(f"weights.sparsity must be a fraction in [0, 1), got {sparsity!r}")
        if implied is not None and abs(sparsity - implied) > 1e-9:
            raise RecipeError(
                f"weights.sparsity {sparsity} contradicts pattern {self.pattern!r}, which zeroes {implied:g} of the "
                "weights (N:M means N zeros in every M); leave sparsity out or make them agree"
            )
        WEIGHT_CRITERIA.check(self.criterion)
        if self.scope not in ("layer", "global"):
            raise RecipeError(f"weights.scope must be one of ('layer', 'global'), got {self.scope!r}")
        if self.scope == "global" and (self.criterion != "magnitude" or match):
            raise RecipeError("weights.scope 'global' needs criterion magnitude and an unstructured pattern")
        block_size = self.block_size
        if block_size is None:  # the largest block of at most 128 columns that N:M groups tile
            block_size = max(128 // int(match[2]), 1) * int(match[2]) if match else 128
        if not isinstance(self.sequential, bool):
            raise RecipeError(f"weights.sequential must be true or false, got {self.sequential!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise RecipeError(f"weights.block_size must be a positive integer, got {block_size!r}")
        if match and block_size % int(match.group(2)):
            raise RecipeError(f"weights.block_size {block_size} must be a multiple of M in pattern {self.pattern!r}")
        object.__setattr__(self, "sparsity", float(sparsity))
        object.__setattr__(self, "pattern", f"{match[1]}:{match[2]}" if match else "unstructured")
        object.__setattr__(self, "block_size", block_size)

    @property
    def n_m(self) -> tuple[int, int] | None:
        match = _NM.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None


# ------------------------------------------------------------------------------------------------- distill


@dataclass(frozen=True)
class DistillSettings(_Settings):
    """Distillation from the dense model while training (`PruningCallback`, `Distiller`)."""

    NAME = "distill"

    alpha: float = help_field("Weight of the KL term against the task loss, in [0, 1].", 0.5)
    temperature: float = help_field("Softmax temperature of the KL term, > 0.", 2.0)
    hidden: float = help_field("Weight of the hidden-state MSE term, >= 0.", 0.0)

    def __post_init__(self):
        for key in self.keys():
            if not _is_number(getattr(self, key)):
                raise RecipeError(f"distill.{key} must be a number, got {getattr(self, key)!r}")
        if not 0 <= self.alpha <= 1:
            raise RecipeError(f"distill.alpha must lie in [0, 1], got {self.alpha}")
        if self.temperature <= 0 or self.hidden < 0:
            raise RecipeError("distill.temperature must be > 0 and distill.hidden >= 0")

    @property
    def off(self) -> bool:
        """Neither term has weight: training on the task loss alone, no teacher."""
        return self.alpha == 0 and self.hidden == 0


# ------------------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class ScheduleSettings(_Settings):
    """When `PruningCallback` prunes: one-shot at a step, or gradually on the cubic schedule of Zhu & Gupta 2017.

    Steps are optimizer steps (int) or fractions of the training steps (float in [0, 1]); they become steps
    when training begins and its length is known (`training.schedule.resolve_schedule`).
    """

    NAME = "schedule"

    type: str = help_field("`oneshot` (prune once, at `start`) or `cubic` (gradually from `start` to `end`).", "cubic")
    start: int | float | None = help_field("First pruning step; default 1 (oneshot) or 0.1 of training (cubic).", None)
    end: int | float | None = help_field("Last pruning step (cubic); default 0.7 of training.", None)
    every: int = help_field("Re-prune every this many steps between `start` and `end` (cubic).", 1)
    shrink: int | float | None = help_field(
        "Remove the pruned units physically after this step (at or after `end`), so the rest of training runs on "
        "the small model (single process); default: at train end.",
        None,
    )

    def __post_init__(self):
        if self.type not in ("oneshot", "cubic"):
            raise RecipeError(f"schedule.type must be 'oneshot' or 'cubic', got {self.type!r}")
        for name in ("start", "end", "shrink"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value):
                raise RecipeError(
                    f"schedule.{name} must be a step (int) or a fraction of training (float), got {value!r}"
                )
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise RecipeError(f"schedule.{name}={value} as a fraction of training must lie in [0, 1]")
            if isinstance(value, int) and value < 0:
                raise RecipeError(f"schedule.{name} must be a step >= 0, got {value}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise RecipeError(f"schedule.every must be a positive number of steps, got {self.every!r}")
        # Steps and fractions can only be compared once the run's length is known; like with like, now.
        start, end = self.start, self.end
        if start is not None and end is not None and type(start) is type(end) and end < start:
            raise RecipeError(f"schedule ends ({_when(end)}) before it starts ({_when(start)})")
        if self.shrink is not None and end is not None and type(end) is type(self.shrink) and self.shrink < end:
            raise RecipeError(
                f"schedule.shrink ({_when(self.shrink)}) must lie between the last pruning step ({_when(end)}) and "
                "the end of training"
            )


def _when(value: int | float) -> str:
    return f"{value:g} of training" if isinstance(value, float) else f"step {value}"
