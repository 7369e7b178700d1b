"""Recovery training of a pruned causal LM on this CPU: a plain `transformers.Trainer` on windows of the training
part, with the dense model as teacher.

Two ways, both what a transformers user writes:
- one-shot, then distil: `hfprune.prune` first (the benchmark reuses its saved one-shot model), then train with
  `hfprune.Distiller(student, ..., teacher=dense)`;
- gradual: `hfprune.PruningCallback` on the dense model, which gates units on a cubic schedule while training,
  distils from a frozen copy of the dense model and shrinks the model at train end.

Training is bounded by a step count and by a wall-clock limit (`StopAfter`), whichever comes first, so a run on a
busy machine takes no longer than the budget (it then trains fewer steps; the result records how many).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch
import transformers

import hfprune

DISTILL = {"alpha": 0.5, "temperature": 2.0}


@dataclass
class RecoverySettings:
    """How long and how fast recovery trains."""

    steps: int = 100
    batch_size: int = 4
    learning_rate: float = 1e-4
    max_seconds: float = 25 * 60
    log_every: int = 5


class StopAfter(transformers.TrainerCallback):
    """Stop training once `seconds` of wall time have passed since train begin; record the steps taken."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = 0.0
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        if time.perf_counter() - self.started > self.seconds:
            control.should_training_stop = True


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length token windows as causal-LM examples: the labels are the inputs (the model shifts them)."""

    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        ids = self.windows[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def train(model, windows: torch.Tensor, settings: RecoverySettings, callbacks=()) -> dict:
    """Train `model` in place on `windows`; returns the steps taken, the seconds and the logged losses."""
    stop = StopAfter(settings.max_seconds)
    with tempfile.TemporaryDirectory() as output_dir:
        args = transformers.TrainingArguments(
            output_dir=output_dir, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, warmup_steps=max(1, settings.steps // 20),
            lr_scheduler_type="cosine", weight_decay=0.0, logging_steps=settings.log_every, save_strategy="no",
            report_to=[], seed=0, use_cpu=True, dataloader_num_workers=0,
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=WindowDataset(windows),
                                       callbacks=[*callbacks, stop])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    model.eval()
    return {"steps": stop.steps, "train_s": seconds, "losses": losses, "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate}


def distil_pruned(student, teacher, windows: torch.Tensor, settings: RecoverySettings) -> dict:
    """One-shot pruned `student` trained against the dense `teacher` (`hfprune.Distiller`)."""
    distiller = hfprune.Distiller(student, DISTILL, teacher=teacher)
    try:
        return train(student, windows, settings)
    finally:
        distiller.detach()


def gradual(model, recipe: hfprune.Recipe, windows: torch.Tensor, settings: RecoverySettings, seq_len: int) -> dict:
    """Prune `model` while training it (`hfprune.PruningCallback` with `recipe`, which carries `distill`)."""
    callback = hfprune.PruningCallback(recipe, seq_len=seq_len)
    result = train(model, windows, settings, callbacks=[callback])
    result["metrics"] = dict(callback.metrics)
    return result
