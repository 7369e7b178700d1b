"""When to prune during training: one-shot at a step, or gradually on the cubic schedule of Zhu & Gupta 2017
("To prune, or not to prune"): kept_t = final + (1 - final) * (1 - (t - start) / (end - start))^3, re-pruning
every `every` steps from `start` to `end`.

A recipe's `schedule` (`hfprune.settings.ScheduleSettings`): `{type: oneshot|cubic, start, end, every, shrink}`;
`start`/`end`/`shrink` are steps, or fractions of the training steps when given as floats in [0, 1]. `shrink`
(at or after `end`) is the step after which the pruned units are removed physically, so the rest of training runs
on the small model; without it they are removed when training ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecipeError
from ..settings import ScheduleSettings


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


# Gradual pruning recovers better than one cut (Zhu & Gupta 2017; the fine-tuning benchmark); re-pruning every 10
# steps costs a budget search each time, ~0.3 s for MiniLM.
DEFAULT_SCHEDULE = ScheduleSettings(type="cubic", every=10)


def _steps(value: int | float, total: int) -> int:
    return round(value * total) if isinstance(value, float) else value


def resolve_schedule(settings: ScheduleSettings | None, final: float, total_steps: int) -> Schedule:
    """Turn a recipe's `schedule` (None: `DEFAULT_SCHEDULE`) into steps for a run of `total_steps`.
    The settings were checked when the recipe was built; what needs the run's length is checked here."""
    settings = settings or DEFAULT_SCHEDULE
    oneshot = settings.type == "oneshot"
    start = _steps(settings.start if settings.start is not None else (1 if oneshot else 0.1), total_steps)
    end = _steps(settings.end if settings.end is not None else (start if oneshot else 0.7), total_steps)
    if end < start:
        raise RecipeError(f"schedule ends (step {end}) before it starts (step {start})")
    if end > total_steps or start < 1 and oneshot:
        raise RecipeError(
            f"schedule step {end if end > total_steps else start} is outside the training run (steps 1..{total_steps})"
        )
    shrink = settings.shrink
    if shrink is not None:
        shrink = _steps(shrink, total_steps)
        if not max(end, 1) <= shrink <= total_steps:
            raise RecipeError(
                f"schedule.shrink (step {shrink}) must lie between the last pruning step ({max(end, 1)}) and the end "
                f"of training (step {total_steps})"
            )
    return Schedule(settings.type, max(start, 1), max(end, 1), settings.every, final, shrink)
