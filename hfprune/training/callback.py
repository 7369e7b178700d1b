"""`PruningCallback`: prune while fine-tuning with a plain `transformers.Trainer`, one extra line:

```python
trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[hfprune.PruningCallback(recipe)])
```

What is pruned, and how, is the job of one strategy picked when the callback is built:

- heads and neurons (`structured_strategy.py`): soft masks from train begin, scores accumulated over training
  steps (Fisher, Taylor, movement) or read from the weights (magnitude), the budget search of one-shot pruning on
  the recipe's schedule, and the zero-gated units removed physically at train end (or at `schedule.shrink`), so
  the saved model is small;
- single weights, with `structures: [weights]` (`weights_strategy.py`): magnitude pruning on the same schedule,
  the pruned weights set back to exactly zero after every optimizer step.

The callback itself runs the Trainer events, distillation and logging. Unless the recipe turns distillation off
(`distill: {alpha: 0}`), a frozen copy of the dense model teaches the pruned one (see `distill.py`).

The callback's state (gates, accumulated scores, recipe) is written into every Trainer checkpoint as
`hfprune_callback.json`; a run resumed with `resume_from_checkpoint` picks it up and ends with the same model as
an uninterrupted run. Resuming with a different recipe is an error.

Under `torchrun` / `accelerate launch` every rank decides the same masks and ends with the same model, whether
each process holds the whole model (DDP) or a shard of it (FSDP2, `fully_shard`; the model is gathered before the
cut and saved unsharded). FSDP1, DeepSpeed ZeRO-3 and tensor parallelism are refused at train begin
(`sharding.py`).

The pruning metrics (`hfprune/flops_kept`, `hfprune/params_kept`, `hfprune/sparsity`, `hfprune/heads_kept`,
`hfprune/neurons_kept`; `hfprune/weight_sparsity` for weights) are added to every Trainer log, so the console,
`state.log_history` and reporting integrations (TensorBoard, W&B, ...) see them.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..core import prepared_adapter
from ..errors import RecipeError, UnsupportedTrainingError
from ..recipe import Recipe
from ..settings import DistillSettings
from .distill import Distiller
from .sharding import SUPPORTED, check_sharding
from .strategy import PruningStrategy
from .structured_strategy import StructuredPruning
from .weights_strategy import WeightPruning

if TYPE_CHECKING:
    from ..core.masks import SoftMasks
    from ..sparsity.masks import WeightMasks
    from ..structured.search import Plan
    from .schedule import Schedule

CALLBACK_STATE = "hfprune_callback.json"
logger = logging.get_logger(__name__)


class PruningCallback(TrainerCallback):
    """Prune during fine-tuning, on the recipe's schedule, and shrink the model at the end of training.

    Args:
        recipe: a `Recipe` (or dict) with a `flops` or `params` fraction target, a criterion among
            fisher/taylor/magnitude/movement (or `structures: [weights]` with `weights` settings), and a
            `schedule` (default: cubic from 10 % to 70 % of training, re-pruning every 10 steps). Distillation
            from the dense model is on by default (`distill` alpha 0.5, temperature 2); `distill: {alpha: 0}`
            turns it off.
        seq_len: sequence length for the FLOPs budget (default: the recipe's `seq_len`, else 128); for
            encoder-decoders (Whisper) the decoder's, i.e. the mean label length in tokens.
        encoder_seq_len: encoder-decoders only: the encoder's length for the budget (default: the recipe's
            `encoder_seq_len`, else `seq_len`; Whisper's encoder always sees 1500 frames).
        teacher: the model to distill from (default: a frozen copy of the model at train begin). Pass the
            original model when the one being trained was already pruned, e.g. one-shot by `hfprune.prune`: a
            copy of it would only teach what is left.

    Example:
        ```python
        >>> recipe = hfprune.Recipe(target={"flops": 0.4}, criterion="fisher",
        ...                         schedule={"type": "cubic", "start": 0.1, "end": 0.6, "every": 20})
        >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[hfprune.PruningCallback(recipe)])
        >>> trainer.train()   # the model is physically pruned when this returns
        ```
    """

    def __init__(
        self,
        recipe: Recipe | dict,
        seq_len: int | None = None,
        encoder_seq_len: int | None = None,
        teacher: torch.nn.Module | None = None,
    ):
        self.recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
        # Distillation is on unless the recipe turns it off: on the three tasks of scripts/benchmarks/bench_callback.py
        # (25% FLOPs, 3 epochs) the gradual schedule with the dense model as teacher ended 0.3-3.2 points above
        # one cut without a teacher.
        distill = self.recipe.distill if self.recipe.distill is not None else DistillSettings()
        self.distill: DistillSettings | None = None if distill.off else distill
        if teacher is not None and self.distill is None:
            raise RecipeError("PruningCallback got a teacher, but the recipe turns distillation off (distill.alpha 0 "
                              "and distill.hidden 0)")
        self.teacher = teacher
        # Weight settings mean single weights alone (WeightPruning refuses heads/neurons beside them); the target
        # and criterion then do not apply.
        self.strategy: PruningStrategy = (
            WeightPruning(self.recipe)
            if self.recipe.weights is not None
            else StructuredPruning(self.recipe, seq_len=seq_len, encoder_seq_len=encoder_seq_len)
        )
        self.distiller: Distiller | None = None

    # ------------------------------------------------------------------------------------ strategy state
    # Read where the callback is at hand (tests, scripts); None or empty where the mode has no such thing.

    @property
    def schedule(self) -> Schedule | None:
        """The resolved `Schedule` (None before train begin)."""
        return self.strategy.schedule

    @property
    def metrics(self) -> dict[str, float]:
        """The pruning metrics added to every Trainer log."""
        return self.strategy.metrics

    @property
    def masks(self) -> SoftMasks | None:
        """Heads and neurons: the `SoftMasks` while units are gated."""
        return getattr(self.strategy, "masks", None)

    @property
    def accumulated(self) -> dict[str, torch.Tensor]:
        """Heads and neurons: the accumulated scores, by site."""
        return getattr(self.strategy, "accumulated", {})

    @property
    def plan(self) -> Plan | None:
        """Heads and neurons: the `Plan` of the last pruning step."""
        return getattr(self.strategy, "plan", None)

    @property
    def shrunk(self) -> bool:
        """Heads and neurons: whether the pruned units were already removed physically."""
        return getattr(self.strategy, "shrunk", False)

    @property
    def weight_masks(self) -> WeightMasks | None:
        """Weights: the `WeightMasks` while training."""
        return getattr(self.strategy, "weight_masks", None)

    # ---------------------------------------------------------------------------------------------- events

    def on_init_end(self, args, state, control, **kwargs):
        self._run_before_reporters()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._run_before_reporters()  # again, for a callback added with `trainer.add_callback`
        prepared_adapter(model)
        self.strategy.sharded = self._check_sharding(model, args)
        self.strategy.resolve_schedule(args, state.max_steps)
        saved = self._saved_state(args, state)
        if saved and self.distill is not None and self.teacher is None:
            # The Trainer has loaded the checkpoint's weights by now: a copy of them would teach the partly pruned
            # student, not the dense model, and the run would silently differ from an uninterrupted one.
            raise RecipeError(
                "resuming from a checkpoint with distillation needs the dense model as teacher (the model now holds "
                f"the checkpoint's {'shrunk' if saved.get('shrunk') else 'partly pruned'} weights): pass "
                "PruningCallback(recipe, teacher=dense), or set distill: {alpha: 0} to train without one"
            )
        # A default teacher is copied before any gate or weight mask exists, so it stays the dense model.
        if self.distill is not None:
            if self.teacher is not None:
                self.teacher.to(next(model.parameters()).device)  # the Trainer placed the student, not the teacher
            self.distiller = Distiller(model, self.distill, teacher=self.teacher)
        self.strategy.start(model, saved)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.strategy.before_optimizer_step(model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.strategy.after_optimizer_step()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.strategy.step_end(model, state.global_step, kwargs.get("optimizer"))

    def on_save(self, args, state, control, **kwargs):
        if not self.strategy.active or not args.should_save:
            return
        directory = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        payload = {"recipe": self.recipe.to_dict(), "step": state.global_step, **self.strategy.checkpoint_state()}
        if directory.is_dir():
            (directory / CALLBACK_STATE).write_text(json.dumps(payload))

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = self.strategy.metrics
        if logs is not None and metrics:
            logs.update(metrics)
            # The Trainer stored a copy of `logs` just before calling the callbacks.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(metrics)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.distiller is not None:
            self.distiller.detach()
            self.distiller = None
        self.strategy.end(model)

    def _run_before_reporters(self) -> None:
        """Move this callback to the front of the Trainer's callback list.

        The Trainer puts reporting integrations (TensorBoard, W&B, ...) before user callbacks, and each callback
        sees the `logs` dict as it is when its turn comes. `on_log` adds the pruning metrics to that dict, so it
        must run first. Callbacks are not handed the list, so it is found as the `callbacks` attribute of the
        object holding a list that holds this callback. Moving an element from position k to 0 leaves the
        elements after k in place, so an event loop running over the list right now neither skips nor repeats
        a callback.
        """
        for holder in gc.get_referrers(self):
            if not isinstance(holder, list) or holder[0] is self:
                continue
            # The owner is the handler itself, or its `__dict__` on Pythons that keep a separate one.
            owners = gc.get_referrers(holder)
            if any((owner.get("callbacks") if isinstance(owner, dict) else getattr(owner, "callbacks", None)) is holder
                   for owner in owners):
                holder.remove(self)
                holder.insert(0, self)

    def _check_sharding(self, model, args) -> bool:
        """Whether `model` is sharded by FSDP2; refuse the setups this callback cannot prune correctly."""
        sharded = check_sharding(model, args)
        if sharded and not self.strategy.supports_fsdp2:
            raise UnsupportedTrainingError(
                f"{type(self.strategy).__name__} (structures: {self.recipe.structures}) does not support FSDP2 yet: "
                "heads and neurons do; or train weight sparsity under DDP"
            )
        asked = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        if asked and not sharded:
            # accelerate (1.15) applies an FSDP plugin only on accelerators: on CPU it trains with DDP (MULTI_CPU),
            # or, without use_cpu, as independent processes.
            logger.warning("PruningCallback: FSDP was asked for, but the model is not sharded (accelerate turns FSDP "
                           "on for GPUs and other accelerators only); each of the %d process(es) holds the whole "
                           "model. %s.", getattr(args, "world_size", 1), SUPPORTED)
        elif sharded:
            logger.info("PruningCallback: the model is sharded by FSDP2 over %d process(es).",
                        getattr(args, "world_size", 1))
        return sharded

    # ---------------------------------------------------------------------------------------- checkpoints

    def _saved_state(self, args, state) -> dict | None:
        """The state saved with the checkpoint this run resumes from (None for a fresh run)."""
        if state.global_step == 0:
            return None
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / CALLBACK_STATE
        if not path.exists():
            raise RecipeError(
                f"resuming at step {state.global_step}, but {path} is missing: the checkpoint was not written by a "
                "run with PruningCallback, or it lives outside args.output_dir"
            )
        saved = json.loads(path.read_text())
        # Compared as recipes, not as the mappings written: defaults filled in since (a typed setting writes all of
        # its fields) do not make the same recipe a different one.
        written, current = Recipe.from_dict(saved["recipe"]).to_dict(), self.recipe.to_dict()
        if written != current:
            changed = sorted(k for k in written if written[k] != current.get(k))
            raise RecipeError(f"the checkpoint was written with a different recipe (fields {changed} differ)")
        return saved
