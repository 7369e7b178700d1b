"""`PruningCallback`: prune while fine-tuning with a plain `transformers.Trainer`, one extra line:

```python
trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[hfprune.PruningCallback(recipe)])
```

Soft masks are attached at train begin. Scores accumulate over training steps through the gates (Fisher: sum of
squared gate gradients per optimizer step; Taylor: sum of |gradient|), or from the weights (movement, Sanh et
al. 2020: sum over steps of -dL/dW * W per head and neuron; magnitude: read when needed). On the recipe's
schedule the budget search of one-shot pruning picks the units to keep; gates of the others go to 0 and stay
there (their units' output is exactly zero through every later optimizer step). At train end the zero-gated
units are removed physically, so the saved model is small; with `schedule.shrink` that happens at the step it
names instead (single process), the optimizer's state sliced like the weights (`optimizer_state.py`), so the
rest of training runs on the small model.

With `distill` in the recipe, a frozen copy of the dense model teaches the pruned one (see `distill.py`).

The callback's state (gates, accumulated scores, recipe) is written into every Trainer checkpoint as
`hfprune_callback.json`; a run resumed with `resume_from_checkpoint` picks it up and ends with the same model as
an uninterrupted run. Resuming with a different recipe is an error.

Under `torchrun` / `accelerate launch`, gate gradients are averaged over processes before they are scored, so
every rank decides the same masks and ends with the same model.

The pruning metrics (`hfprune/flops_kept`, `hfprune/params_kept`, `hfprune/sparsity`, `hfprune/heads_kept`,
`hfprune/neurons_kept`) are added to every Trainer log, so the console, `state.log_history` and reporting
integrations (TensorBoard, W&B, ...) see them.

With `structures: [weights]` single weights are pruned instead, by magnitude, on the same schedule (the
sparsity rises on the cubic curve; at each pruning step the mask is re-selected among the weights still kept).
Pruned weights are set back to exactly zero right after every optimizer step (`on_optimizer_step`), so every
forward pass sees them at 0 and the trained model keeps them; `hfprune/weight_sparsity` is logged.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..calibration.seq2seq import is_encoder_decoder
from ..core import prepared_adapter
from ..core.linear import replacements
from ..core.masks import SoftMasks
from ..core.record import ensure_record
from ..core.surgery import remove_heads, remove_neurons
from ..cost.flops import count
from ..errors import RecipeError
from ..recipe import Recipe
from ..sparsity.masks import WeightMasks
from ..structured.criteria import Scores, compute_scores, movement_step
from ..structured.search import Plan, planned_cost, search
from .distill import Distiller
from .optimizer_state import follow_surgery
from .schedule import resolve_schedule

logger = logging.get_logger(__name__)
TRAINING_CRITERIA = ("fisher", "taylor", "magnitude", "movement")
CALLBACK_STATE = "hfprune_callback.json"


def _mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Average a gate gradient over data-parallel processes. Gates are not model parameters, so DDP does not
    synchronise them; without this every rank would score (and prune) on its own shard of the data."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        tensor /= torch.distributed.get_world_size()
    return tensor


def _training_weight_settings(recipe: Recipe):
    """The recipe's weight settings when it sparsifies weights during training (None otherwise), refusing
    what training cannot do yet."""
    settings = recipe.weights
    if settings is None:
        return None
    if recipe.structures != ["weights"]:
        raise RecipeError("PruningCallback: structures [weights] cannot be combined with heads/neurons/layers yet; "
                          "sparsify weights alone, or combine them one-shot with hfprune.prune")
    if settings.criterion != "magnitude":
        raise RecipeError(f"PruningCallback: weights.criterion {settings.criterion!r} needs calibration data; during "
                          "training use magnitude (or sparsify one-shot with hfprune.prune, then fine-tune)")
    kind = recipe.schedule.type if recipe.schedule is not None else "oneshot"
    if settings.n_m is not None and kind != "oneshot":
        raise RecipeError(f"PruningCallback: an N:M pattern ({settings.pattern}) is reached in one step; use a "
                          "oneshot schedule")
    return settings


class PruningCallback(TrainerCallback):
    """Prune during fine-tuning, on the recipe's schedule, and shrink the model at the end of training.

    Args:
        recipe: a `Recipe` (or dict) with a `flops` or `params` fraction target, a criterion among
            fisher/taylor/magnitude, and a `schedule` (`{type: cubic, start: 0.1, end: 0.7, every: 50}`).
        seq_len: sequence length for the FLOPs budget (default: the recipe's `seq_len`, else 128); for
            encoder-decoders (Whisper) the decoder's, i.e. the mean label length in tokens.
        encoder_seq_len: encoder-decoders only: the encoder's length for the budget (default: the recipe's
            `encoder_seq_len`, else `seq_len`; Whisper's encoder always sees 1500 frames).
        teacher: the model to distill from when the recipe has `distill` settings (default: a frozen copy of the
            model at train begin). Pass the original model when the one being trained was already pruned, e.g.
            one-shot by `hfprune.prune`: a copy of it would only teach what is left.

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
        if teacher is not None and self.recipe.distill is None:
            raise RecipeError("PruningCallback got a teacher, but the recipe has no `distill` settings to use it with")
        self.teacher = teacher
        self.metric = self.recipe.target.metric
        self.weights = _training_weight_settings(self.recipe)  # None unless the recipe sparsifies weights alone
        self.weight_masks: WeightMasks | None = None
        structured = self.weights is None  # the target and criterion only concern heads and neurons
        if structured and self.metric not in ("flops", "params"):
            raise RecipeError(
                "PruningCallback needs a flops or params fraction target (target.latency is measured once, by the "
                "one-shot hfprune.prune; a flops target is the closest during training)"
            )
        if structured and self.recipe.criterion not in TRAINING_CRITERIA:
            raise RecipeError(
                f"criterion {self.recipe.criterion!r} is not available during training yet; use one of "
                f"{TRAINING_CRITERIA}"
            )
        for one_shot in ("layers", "channels"):
            if one_shot in self.recipe.structures:
                raise RecipeError(
                    f"PruningCallback prunes heads and neurons; structures: [{one_shot}] is one-shot only "
                    "(hfprune.prune)"
                )
        self.seq_len = seq_len or self.recipe.seq_len or 128
        self.encoder_seq_len = encoder_seq_len or self.recipe.encoder_seq_len
        self.masks: SoftMasks | None = None
        self.distiller: Distiller | None = None
        self.plan: Plan | None = None
        self.metrics: dict[str, float] = {}
        self.accumulated: dict[str, torch.Tensor] = {}
        self.shrunk = False  # pruned units already removed physically (schedule.shrink)

    # ---------------------------------------------------------------------------------------------- events

    def on_init_end(self, args, state, control, **kwargs):
        self._run_before_reporters()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._run_before_reporters()  # again, for a callback added with `trainer.add_callback`
        prepared_adapter(model)
        # The weights schedule runs on the kept density, like the structured one on the kept FLOPs/params.
        final = 1 - self.weights.sparsity if self.weights is not None else self.recipe.target.get(self.metric)
        self.schedule = resolve_schedule(self.recipe.schedule, final, state.max_steps)
        if self.schedule.shrink is not None:
            if self.weights is not None:
                raise RecipeError("schedule.shrink removes pruned heads and neurons; a weights recipe has none")
            # Where shrinking early cannot work, the model shrinks at train end: the same model, only slower to train.
            reason = None
            if args.world_size > 1:
                reason = (f"it needs a single process (DDP registers the parameters with its wrapper, which surgery "
                          f"cannot change); {args.world_size} processes")
            elif args.load_best_model_at_end:
                reason = "load_best_model_at_end may load a checkpoint from before the shrink, at the full size"
            if reason:
                logger.warning("PruningCallback: schedule.shrink is put off to train end: %s", reason)
                self.schedule = replace(self.schedule, shrink=None)
        saved = self._saved_state(args, state)
        self.shrunk = bool(saved and saved.get("shrunk"))
        if self.shrunk and self.recipe.distill is not None and self.teacher is None:
            raise RecipeError(
                "this checkpoint was written after schedule.shrink, so the model holds no dense copy to teach it: "
                "pass the dense model, PruningCallback(recipe, teacher=dense)"
            )
        # A default teacher is copied before any gate or weight mask exists, so it stays the dense model.
        if self.recipe.distill is not None:
            if self.teacher is not None:
                self.teacher.to(next(model.parameters()).device)  # the Trainer placed the student, not the teacher
            self.distiller = Distiller(model, self.recipe.distill, teacher=self.teacher)
        if self.weights is not None:
            self.weight_masks = WeightMasks(model, self.weights)  # the zeros already there stay
            self.metrics = saved["metrics"] if saved is not None else {"hfprune/weight_sparsity": 0.0}
            return
        if self.encoder_seq_len is None and is_encoder_decoder(model):
            logger.warning("PruningCallback: no encoder_seq_len for %s; its encoder is counted at seq_len=%d, which "
                           "skews the FLOPs budget (Whisper: set encoder_seq_len: 1500)", type(model).__name__,
                           self.seq_len)
        if self.shrunk:  # nothing is left to prune: the rest is plain training
            self.metrics = saved["metrics"]
            return
        self.dense = count(model, seq_len=self.seq_len, encoder_seq_len=self.encoder_seq_len)
        gradients = self.recipe.criterion in ("fisher", "taylor")
        self.masks = SoftMasks(model, requires_grad=gradients).attach()
        self.accumulated = {n: torch.zeros_like(g) for n, g in [*self.masks.heads.items(), *self.masks.neurons.items()]}
        self.metrics = {"hfprune/flops_kept": 1.0}
        if saved is not None:
            self._restore(saved)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # Movement needs the weights' gradients, which exist between backward and the optimizer step.
        if self.masks is None or self.recipe.criterion != "movement":
            return
        heads, neurons = movement_step(model)
        for name, score in [*heads.items(), *neurons.items()]:
            if name in self.accumulated:
                self.accumulated[name] += _mean_over_processes(score.to(self.accumulated[name].device))

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Right after the step: momentum and weight decay move pruned weights off zero; the next forward must
        # see them at exactly 0.
        if self.weight_masks is not None:
            self.weight_masks.apply()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.weight_masks is not None:
            density = self.schedule.target_at(state.global_step)
            if density is not None:
                self.weight_masks.prune_to(1 - density)
                self.metrics = {"hfprune/weight_sparsity": self.weight_masks.sparsity()}
            return
        if self.masks is None:
            return
        for name, gate in [*self.masks.heads.items(), *self.masks.neurons.items()]:
            if gate.grad is not None:
                grad = _mean_over_processes(gate.grad.detach())
                self.accumulated[name] += grad.pow(2) if self.recipe.criterion == "fisher" else grad.abs()
                gate.grad = None
        target = self.schedule.target_at(state.global_step)
        if target is not None and (target < 1 or self.plan is not None):  # a cubic schedule starts at "keep all"
            self._prune_to(model, target)
        if state.global_step == self.schedule.shrink:
            self._shrink(model, kwargs.get("optimizer"))

    def on_save(self, args, state, control, **kwargs):
        if (self.masks is None and self.weight_masks is None and not self.shrunk) or not args.should_save:
            return
        directory = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        # Weight masks need no saving: the checkpoint's zeros are the masks when training resumes.
        gated = [] if self.masks is None else [*self.masks.heads.items(), *self.masks.neurons.items()]
        gates = {n: g.detach().cpu().tolist() for n, g in gated}
        payload = {
            "recipe": self.recipe.to_dict(),
            "step": state.global_step,
            "gates": gates,
            "accumulated": {n: a.cpu().tolist() for n, a in self.accumulated.items()},
            "metrics": self.metrics,
            "shrunk": self.shrunk,
        }
        if directory.is_dir():
            (directory / CALLBACK_STATE).write_text(json.dumps(payload))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.metrics:
            logs.update(self.metrics)
            # The Trainer stored a copy of `logs` just before calling the callbacks.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self.metrics)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.distiller is not None:
            self.distiller.detach()
            self.distiller = None
        if self.weight_masks is not None:
            self.weight_masks.apply()
            self.weight_masks = None
            ensure_record(model).recipe = self.recipe.to_dict()
        elif self.masks is not None:
            self._shrink(model)

    @torch.no_grad()
    def _shrink(self, model, optimizer=None) -> None:
        """Remove the zero-gated units physically; an optimizer passed in goes on training what is left."""
        heads, neurons = self.masks.zeros()
        self.masks.remove()
        self.masks, self.accumulated = None, {}
        with replacements() as replaced:
            remove_heads(model, heads)
            remove_neurons(model, neurons)
        if optimizer is not None:
            follow_surgery(optimizer, model, replaced)
        ensure_record(model).recipe = self.recipe.to_dict()
        self.shrunk = True

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
        if saved["recipe"] != self.recipe.to_dict():
            changed = sorted(k for k in saved["recipe"] if saved["recipe"][k] != self.recipe.to_dict().get(k))
            raise RecipeError(f"the checkpoint was written with a different recipe (fields {changed} differ)")
        return saved

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        for name, gate in [*self.masks.heads.items(), *self.masks.neurons.items()]:
            gate.copy_(torch.tensor(saved["gates"][name], dtype=gate.dtype))
            self.accumulated[name].copy_(torch.tensor(saved["accumulated"][name], dtype=gate.dtype))
        self.metrics = saved["metrics"]

    # ------------------------------------------------------------------------------------------- pruning

    def _scores(self, model) -> Scores:
        if self.recipe.criterion == "magnitude":
            scores = compute_scores(model, "magnitude", [])
        else:
            scores = Scores(
                {n: self.accumulated[n].clone() for n in self.masks.heads},
                {n: self.accumulated[n].clone() for n in self.masks.neurons},
                comparable=self.recipe.criterion == "fisher",  # movement, like taylor, is a first-order score
            )
        # What is gone stays gone: a removed unit can never outrank a kept one.
        for table, gates in ((scores.heads, self.masks.heads), (scores.neurons, self.masks.neurons)):
            for name, gate in gates.items():
                table[name] = table[name].float().masked_fill(gate.detach() == 0, float("-inf"))
        return scores

    @torch.no_grad()
    def _prune_to(self, model, fraction: float) -> None:
        recipe = replace(self.recipe, target={self.metric: fraction}, rearrange=False, tune=False)
        self.plan = search(self.dense, self._scores(model), recipe)
        self.plan.apply(self.masks)
        params_kept = planned_cost(self.plan, self.dense, "params") / self.dense.params
        self.metrics = {
            "hfprune/flops_kept": planned_cost(self.plan, self.dense, "flops") / self.dense.flops,
            "hfprune/params_kept": params_kept,
            "hfprune/sparsity": 1 - params_kept,  # of the whole model's parameters
            "hfprune/heads_kept": sum(len(k) for k in self.plan.heads.values()),
            "hfprune/neurons_kept": sum(len(k) for k in self.plan.neurons.values()),
        }
