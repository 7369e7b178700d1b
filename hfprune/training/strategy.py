"""`PruningStrategy`: the part of pruning during training that depends on what is pruned.

`PruningCallback` keeps what every mode shares: the Trainer events, the checkpoint file, distillation, logging.
It picks one strategy when it is built and hands it the rest: `StructuredPruning` (`structured_strategy.py`) for
heads and neurons, `WeightPruning` (`weights_strategy.py`) for single weights. Each hook is called from the Trainer
event of the same moment; the optional ones do nothing here, so a strategy implements only what it needs.
"""

from __future__ import annotations

from ..core.record import ensure_record
from ..recipe import Recipe
from .schedule import Schedule, resolve_schedule


class PruningStrategy:
    """Base of the strategies `PruningCallback` delegates to.

    Args:
        recipe: the `Recipe`; a subclass refuses, when it is built, what it cannot do during training.

    Attributes:
        schedule: the `Schedule` in optimizer steps, resolved at train begin (`resolve_schedule`).
        metrics: the pruning metrics `PruningCallback` adds to every Trainer log.
        sharded: whether the model is sharded by FSDP2 (set by `PruningCallback` at train begin, see
            `sharding.py`).
    """

    # Whether the strategy can prune a model whose parameters are FSDP2 DTensors; the callback refuses otherwise.
    supports_fsdp2 = False

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.schedule: Schedule | None = None
        self.metrics: dict[str, float] = {}
        self.sharded = False

    # ------------------------------------------------------------------------------------ to implement

    def final_kept(self) -> float:
        """The kept fraction the schedule ends at (of FLOPs/params, or of the weights)."""
        raise NotImplementedError

    def check_shrink(self, schedule: Schedule, args) -> Schedule:
        """The schedule to run, given one with `shrink` set and the Trainer's `args`."""
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """Whether there is pruning state to write into a checkpoint."""
        raise NotImplementedError

    def start(self, model, saved: dict | None) -> None:
        """Train begin, after the distiller (if any) copied the dense model: prepare `model`, and pick up
        `saved`, the state of the checkpoint training resumes from (None for a fresh run)."""
        raise NotImplementedError

    def step_end(self, model, step: int, optimizer=None) -> None:
        """After optimizer step `step`: prune on the schedule."""
        raise NotImplementedError

    def end(self, model) -> None:
        """Train end: leave the final, pruned model, with nothing attached to it."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ optional

    def before_optimizer_step(self, model) -> None:
        """Between backward and the optimizer step, while the weights' gradients exist."""

    def after_optimizer_step(self) -> None:
        """Right after the optimizer step, before the next forward pass."""

    def checkpoint_state(self) -> dict:
        """What `hfprune_callback.json` holds besides the recipe and step: gates, accumulated scores, metrics,
        and whether the model was already shrunk. A strategy without gates or scores writes them empty, so every
        checkpoint has the same fields."""
        return {"gates": {}, "accumulated": {}, "metrics": self.metrics, "shrunk": False}

    # ---------------------------------------------------------------------------------------------- shared

    def resolve_schedule(self, args, max_steps: int) -> Schedule:
        """Resolve the recipe's schedule for `max_steps` optimizer steps, and keep it as `self.schedule`."""
        schedule = resolve_schedule(self.recipe.schedule, self.final_kept(), max_steps)
        if schedule.shrink is not None:
            schedule = self.check_shrink(schedule, args)
        self.schedule = schedule
        return schedule

    def record_recipe(self, model) -> None:
        """Write the recipe into the model's pruning record, which `save_pretrained` keeps."""
        ensure_record(model).recipe = self.recipe.to_dict()
