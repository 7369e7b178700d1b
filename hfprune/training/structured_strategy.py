"""`StructuredPruning`: heads and neurons pruned while training, to a FLOPs or params budget.

Soft masks (gates) are attached at train begin. Scores accumulate over training steps through the gates (Fisher:
sum of squared gate gradients per optimizer step; Taylor: sum of |gradient|), or from the weights (movement, Sanh
et al. 2020: sum over steps of -dL/dW * W per head and neuron; magnitude: read when needed). On the recipe's
schedule the budget search of one-shot pruning picks the units to keep; gates of the others go to 0 and stay
there (their units' output is exactly zero through every later optimizer step). At train end the zero-gated units
are removed physically, so the saved model is small; with `schedule.shrink` that happens at the step it names
instead (single process), the optimizer's state sliced like the weights (`optimizer_state.py`), so the rest of
training runs on the small model.

Under `torchrun` / `accelerate launch`, gate gradients (and movement scores) are averaged over processes before
they are scored, so every rank decides the same masks and ends with the same model. Under FSDP2 the weights are
sharded DTensors: scores read from them are gathered whole (`sharding.whole`), and at train end the model is
gathered site by site, cut, and unwrapped (`sharding.gather_and_cut`), so it saves as a normal checkpoint.

Logged: `hfprune/flops_kept`, `hfprune/params_kept`, `hfprune/sparsity`, `hfprune/heads_kept`,
`hfprune/neurons_kept`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers.utils import logging

from ..calibration.seq2seq import is_encoder_decoder
from ..core.linear import replacements
from ..core.masks import SoftMasks
from ..core.surgery import remove_heads, remove_neurons
from ..cost.flops import ModelCount, count
from ..errors import RecipeError
from ..recipe import Recipe
from ..structured.criteria import Scores, compute_scores, movement_step
from ..structured.search import Plan, mark_gone, planned_cost, search
from .optimizer_state import follow_surgery
from .schedule import Schedule
from .sharding import gather_and_cut, whole
from .strategy import PruningStrategy

logger = logging.get_logger(__name__)
TRAINING_CRITERIA = ("fisher", "taylor", "magnitude", "movement")


def _mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Average a gate gradient over data-parallel processes. Gates are not model parameters, so DDP does not
    synchronise them; without this every rank would score (and prune) on its own shard of the data."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        tensor /= torch.distributed.get_world_size()
    return tensor


class StructuredPruning(PruningStrategy):
    """Gate, score and prune heads and neurons on the recipe's schedule; remove them at `schedule.shrink` or at
    train end.

    Args:
        recipe: a `Recipe` with a `flops` or `params` fraction target and a criterion among `TRAINING_CRITERIA`.
        seq_len: sequence length for the FLOPs budget (default: the recipe's `seq_len`, else 128).
        encoder_seq_len: encoder-decoders only: the encoder's length for the budget (default: the recipe's).

    Attributes:
        masks: the `SoftMasks` from train begin until the units are removed (None outside).
        accumulated: the summed score of every gated site's units, by site name.
        plan: the `Plan` of the last pruning step (None before the first).
        dense: the dense model's `ModelCount`, which the budget is a fraction of.
        shrunk: whether the pruned units were already removed physically.
    """

    supports_fsdp2 = True

    def __init__(self, recipe: Recipe, seq_len: int | None = None, encoder_seq_len: int | None = None):
        super().__init__(recipe)
        self.metric = recipe.target.metric
        if self.metric not in ("flops", "params", "nonembedding_params"):
            raise RecipeError(
                "PruningCallback needs a flops, params or nonembedding_params fraction target (target.latency is "
                "measured once, by the one-shot hfprune.prune; a flops target is the closest during training)"
            )
        if recipe.criterion not in TRAINING_CRITERIA:
            raise RecipeError(
                f"criterion {recipe.criterion!r} is not available during training yet; use one of {TRAINING_CRITERIA}"
            )
        for one_shot in ("layers", "channels", "hidden"):
            if one_shot in recipe.structures:
                raise RecipeError(
                    f"PruningCallback prunes heads and neurons; structures: [{one_shot}] is one-shot only "
                    "(hfprune.prune)"
                )
        if (recipe.iterative_steps or 1) > 1:
            raise RecipeError("iterative_steps is for one-shot hfprune.prune; during training the `schedule` prunes "
                              "step by step already (set iterative_steps: 1 or leave it out)")
        self.seq_len = seq_len or recipe.seq_len or 128
        self.encoder_seq_len = encoder_seq_len or recipe.encoder_seq_len
        self.masks: SoftMasks | None = None
        self.accumulated: dict[str, torch.Tensor] = {}
        self.plan: Plan | None = None
        self.dense: ModelCount | None = None
        self.shrunk = False

    def final_kept(self) -> float:
        return self.recipe.target.get(self.metric)

    def check_shrink(self, schedule: Schedule, args) -> Schedule:
        # Where shrinking early cannot work, the model shrinks at train end: the same model, only slower to train.
        reason = None
        if self.sharded:
            reason = "FSDP2 shards the parameters; they are gathered and cut once, at train end"
        elif args.world_size > 1:
            reason = (f"it needs a single process (DDP registers the parameters with its wrapper, which surgery "
                      f"cannot change); {args.world_size} processes")
        elif args.load_best_model_at_end:
            reason = "load_best_model_at_end may load a checkpoint from before the shrink, at the full size"
        if reason:
            logger.warning("PruningCallback: schedule.shrink is put off to train end: %s", reason)
            return replace(schedule, shrink=None)
        return schedule

    @property
    def active(self) -> bool:
        return self.masks is not None or self.shrunk

    def start(self, model, saved: dict | None) -> None:
        self.shrunk = bool(saved and saved.get("shrunk"))
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
        self.accumulated = {name: torch.zeros_like(gate) for name, gate in self._gates()}
        self.metrics = {"hfprune/flops_kept": 1.0}
        if saved is not None:
            self._restore(saved)

    def before_optimizer_step(self, model) -> None:
        # Movement needs the weights' gradients, which exist between backward and the optimizer step.
        if self.masks is None or self.recipe.criterion != "movement":
            return
        heads, neurons = movement_step(model)
        for name, score in [*heads.items(), *neurons.items()]:
            # Under FSDP2 the sums over sharded weights are DTensors, already over the global gradient: gathered
            # whole, they are the same on every process, and the mean over processes leaves them as they are.
            score = whole(score)
            if name in self.accumulated:
                self.accumulated[name] += _mean_over_processes(score.to(self.accumulated[name].device))

    def step_end(self, model, step: int, optimizer=None) -> None:
        if self.masks is None:
            return
        for name, gate in self._gates():
            if gate.grad is not None:
                grad = _mean_over_processes(gate.grad.detach())
                self.accumulated[name] += grad.pow(2) if self.recipe.criterion == "fisher" else grad.abs()
                gate.grad = None
        target = self.schedule.target_at(step)
        if target is not None and (target < 1 or self.plan is not None):  # a cubic schedule starts at "keep all"
            self._prune_to(model, target)
        if step == self.schedule.shrink:
            self._shrink(model, optimizer)

    def checkpoint_state(self) -> dict:
        return {
            "gates": {name: gate.detach().cpu().tolist() for name, gate in self._gates()},
            "accumulated": {name: score.cpu().tolist() for name, score in self.accumulated.items()},
            "metrics": self.metrics,
            "shrunk": self.shrunk,
        }

    def end(self, model) -> None:
        if self.masks is not None:
            self._shrink(model)

    # ------------------------------------------------------------------------------------------- internals

    def _gates(self) -> list[tuple[str, torch.Tensor]]:
        """Every head and neuron gate, by site name (none once the units are removed)."""
        return [] if self.masks is None else [*self.masks.heads.items(), *self.masks.neurons.items()]

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        for name, gate in self._gates():
            gate.copy_(torch.tensor(saved["gates"][name], dtype=gate.dtype))
            self.accumulated[name].copy_(torch.tensor(saved["accumulated"][name], dtype=gate.dtype))
        self.metrics = saved["metrics"]

    @torch.no_grad()
    def _shrink(self, model, optimizer=None) -> None:
        """Remove the zero-gated units physically; an optimizer passed in goes on training what is left."""
        heads, neurons = self.masks.zeros()
        self.masks.remove()
        self.masks, self.accumulated = None, {}
        with replacements() as replaced:
            if self.sharded:  # the cut needs whole weights, and the saved model must not be FSDP's
                gather_and_cut(model, heads, neurons)
                self.sharded = False
            else:
                remove_heads(model, heads)
                remove_neurons(model, neurons)
        if optimizer is not None:
            follow_surgery(optimizer, model, replaced)
        self.record_recipe(model)
        self.shrunk = True

    def _scores(self, model) -> Scores:
        if self.recipe.criterion == "magnitude":
            scores = compute_scores(model, "magnitude", [])
            scores.heads = {name: whole(score) for name, score in scores.heads.items()}
            scores.neurons = {name: whole(score) for name, score in scores.neurons.items()}
        else:
            scores = Scores(
                {n: self.accumulated[n].clone() for n in self.masks.heads},
                {n: self.accumulated[n].clone() for n in self.masks.neurons},
                comparable=self.recipe.criterion == "fisher",  # movement, like taylor, is a first-order score
            )
        return mark_gone(scores, self.masks)

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
