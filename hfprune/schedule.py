"""When to prune during training: one-shot at a step, or gradually on the cubic schedule of Zhu & Gupta 2017
("To prune, or not to prune"): kept_t = final + (1 - final) * (1 - (t - start) / (end - start))^3, re-pruning
every `every` steps from `start` to `end`.

A recipe's `schedule` field: `{type: oneshot|cubic, start, end, every, shrink}`; `start`/`end`/`shrink` are
steps, or fractions of the training steps when given as floats in [0, 1]. `shrink` (at or after `end`) is the
step after which the pruned units are removed physically, so the rest of training runs on the small model;
without it they are removed when training ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from .recipe import RecipeError

SCHEDULE_KEYS = ("type", "start", "end", "every", "shrink")


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule, in optimizer steps."""

    kind: str
    start: int
    end: int
    every: int
    final: float
    shrink: int | None = None  # None: at train end

    def target_at(self, step: int) -> float | None:
        """The kept fraction to enforce after optimizer step `step`, or None when no pruning happens then."""
        if self.kind == "oneshot":
            return self.final if step == self.start else None
        if step < self.start or step > self.end:
            return None
        if (step - self.start) % self.every and step != self.end:
            return None
        progress = (step - self.start) / max(1, self.end - self.start)
        return self.final + (1.0 - self.final) * (1.0 - progress) ** 3


def _steps(name: str, value, total: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"schedule.{name} must be a step (int) or a fraction of training (float), got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise RecipeError(f"schedule.{name}={value} as a fraction of training must lie in [0, 1]")
        return round(value * total)
    return value


def resolve_schedule(spec: dict | None, final: float, total_steps: int) -> Schedule:
    """Turn a recipe's `schedule` into steps for a run of `total_steps`, with clear errors for bad ones."""
    spec = dict(spec or {"type": "oneshot", "start": 1})
    unknown = sorted(set(spec) - set(SCHEDULE_KEYS))
    if unknown:
        raise RecipeError(f"unknown schedule key(s) {unknown}; known: {list(SCHEDULE_KEYS)}")
    kind = spec.get("type", "cubic")
    if kind not in ("oneshot", "cubic"):
        raise RecipeError(f"schedule.type must be 'oneshot' or 'cubic', got {kind!r}")
    start = _steps("start", spec.get("start", 1 if kind == "oneshot" else 0.1), total_steps)
    end = _steps("end", spec.get("end", start if kind == "oneshot" else 0.7), total_steps)
    every = spec.get("every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise RecipeError(f"schedule.every must be a positive number of steps, got {every!r}")
    if end < start:
        raise RecipeError(f"schedule ends (step {end}) before it starts (step {start})")
    if end > total_steps or start < 1 and kind == "oneshot":
        raise RecipeError(
            f"schedule step {end if end > total_steps else start} is outside the training run (steps 1..{total_steps})"
        )
    shrink = spec.get("shrink")
    if shrink is not None:
        shrink = _steps("shrink", shrink, total_steps)
        if not max(end, 1) <= shrink <= total_steps:
            raise RecipeError(
                f"schedule.shrink (step {shrink}) must lie between the last pruning step ({max(end, 1)}) and the end "
                f"of training (step {total_steps})"
            )
    return Schedule(kind, max(start, 1), max(end, 1), every, final, shrink)
