"""Prune while training with a plain Trainer + PruningCallback, then write what each process ended with.

Launched by tests/test_callback.py like any training script, and compared across launchers:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT --batch 4
    accelerate launch --multi_gpu --num_processes 2 ... tests/ddp_worker.py OUT --batch 4   (CPU: gloo)
    python tests/ddp_worker.py OUT --batch 8        (one process, the same global batch; or `run()` in-process)

Every launch sees the same global batch at every step: the sampler is sequential, and with N processes
Accelerate deals consecutive per-device batches out round-robin, so optimizer step k covers examples
[k * global, (k + 1) * global) whatever N is. Dropout is 0, so no random numbers enter the forward pass.

One launch trains several configurations in turn (RUNS), so the interpreter starts once. Each process writes
`OUT/<run>/rank<r>.pt`: world size, distributed setup, sites, kept original indices, the callback's accumulated
scores and the final state dict. The main process also saves the pruned model to `OUT/<run>/saved` with
`trainer.save_model`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from pathlib import Path

import torch
import transformers
from tiny_models import build  # beside this file: on the path when it runs as a script, and under pytest

import hfprune
from hfprune.core.record import get_record

NO_DROPOUT = {
    "bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "llama": dict(attention_dropout=0.0),
}
# run name -> (tiny model family, criterion, distillation from the dense model). Fisher scores are all-reduced
# gate gradients (on_step_end); movement scores come from the weights' gradients (on_pre_optimizer_step).
RUNS = {
    "bert": ("bert", "fisher", False),
    "bert+movement": ("bert", "movement", False),
    "llama": ("llama", "fisher", False),
    "llama+distill": ("llama", "fisher", True),
}


class Topics(torch.utils.data.Dataset):
    """As test_callback.RandomTopics: the label says whether token 5 appears (learnable, so gradients carry
    signal). With `causal`, the labels are the input ids (next-token prediction) instead."""

    def __init__(self, size=64, length=10, seed=0, causal=False):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, 99, (size, length), generator=generator)
        self.labels = torch.randint(0, 2, (size,), generator=generator)
        self.ids[self.labels == 1, 3] = 5
        self.causal = causal

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": ids.clone() if self.causal else self.labels[index]}


def worker_recipe(criterion: str, distill: bool) -> hfprune.Recipe:
    """What every multi-process run prunes with (DDP here, FSDP2 in fsdp_worker.py): half the FLOPs on a short
    cubic schedule, with or without the dense teacher."""
    return hfprune.Recipe(
        target={"flops": 0.5}, criterion=criterion, round_neurons=4,
        schedule={"type": "cubic", "start": 2, "end": 8, "every": 2},
        distill={"alpha": 0.5, "temperature": 2.0} if distill else {"alpha": 0.0},
    )


class StopAt(transformers.TrainerCallback):
    """Simulates a run killed right after the checkpoint of step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def run(name: str, output_dir: str | Path, batch: int, steps: int = 10, accumulation: int = 1) -> dict:
    """Train configuration `name` with per-device batch `batch` (times `accumulation` micro-batches per optimizer
    step); write and return this process's result."""
    family, criterion, distill = RUNS[name]
    output = Path(output_dir)
    model = build(family, **NO_DROPOUT[family])
    recipe = worker_recipe(criterion, distill)
    callback = hfprune.PruningCallback(recipe, seq_len=10)
    args = transformers.TrainingArguments(
        output_dir=str(output), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
        train_sampling_strategy="sequential", save_strategy="no", report_to=[], use_cpu=True, seed=0,
        logging_steps=2, disable_tqdm=True, gradient_accumulation_steps=accumulation,
        # BERT's classification loss is a per-device mean that ignores `num_items_in_batch`, yet by default
        # (True) the Trainer multiplies it by the number of processes: gradients would double under 2 processes.
        # Causal LM losses divide by the global token count, which is what this setting is for.
        average_tokens_across_devices=family != "bert",
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Topics(causal=family == "llama"),
                                   callbacks=[callback])
    trainer.train()
    trainer.save_model(str(output / "saved"))

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    record = get_record(model)
    result = {
        "world_size": torch.distributed.get_world_size() if distributed else 1,
        "backend": torch.distributed.get_backend() if distributed else None,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "accelerate_launch": "ACCELERATE_MIXED_PRECISION" in os.environ,  # set by `accelerate launch` only
        "sites": hfprune.sites(model),
        "kept": {"heads": record.heads, "kv_heads": record.kv_heads, "neurons": record.neurons},
        "scores": {unit: score.detach().cpu().clone() for unit, score in callback.accumulated.items()},
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "state": {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()},
    }
    rank = torch.distributed.get_rank() if distributed else 0
    torch.save(result, output / f"rank{rank}.pt")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    options = parser.parse_args(argv)
    with process_group_closed_at_end():
        for name in options.runs:
            run(name, Path(options.output_dir) / name, options.batch, options.steps)


@contextlib.contextmanager
def process_group_closed_at_end():
    """Close the process group when the block ends, before the interpreter exits.

    Left open, the DDP reducers of finished runs (kept alive by reference cycles) and gloo's threads are torn down
    in whatever order the interpreter exit picks, and a rank aborted there ("terminate called without an active
    exception") in two CI runs, once after every run had saved. So: free the finished runs' objects while the group
    still exists, wait until both ranks are done with every collective, destroy the group, and skip the
    interpreter's teardown of torch's C++ state (the step that aborted): every result is written by then. After a
    failure, destroy without the barrier (the other rank may never reach it) and let the exception through.
    """
    try:
        yield
    except BaseException:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise
    if torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
