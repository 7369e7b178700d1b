"""Benchmark: pruning while fine-tuning (PruningCallback, gradual + distillation) vs one-shot pruning + fine-tuning.

all-MiniLM-L6-v2 fine-tuned on the fortunes topics (the dense model of `scripts/benchmarks/bench.py`, cached in
`out/minilm-fortunes`), then taken to 40%, 25% and 15% of its attention + FFN FLOPs by, each with the same
number of Trainer steps, batch size and learning-rate schedule:

- `oneshot+finetune`: `hfprune.prune` with `recipes/bert-heads-ffn-fisher.yaml` (Fisher scores on 512 labelled
  training examples, mask rearrangement and tuning), then plain fine-tuning of the small model;
- `gradual+distill`: `hfprune.PruningCallback` with `recipes/bert-gradual-fisher.yaml` (Fisher scores
  accumulated over training steps, cubic schedule, the dense model as teacher), shrunk when the schedule ends;
- `iterative+distill`: two one-shot cuts (the same recipe), each followed by half the steps of fine-tuning with
  the dense model as teacher (`hfprune.Distiller`), the second at a fifth of the learning rate.

Reports test accuracy, FLOPs kept, measured CPU latency speedup over the dense model (all models of one budget
timed round-robin in one loop) and training wall time. Separately, side by side, it times training steps of the
same Trainer without the callback, with it, and with it plus distillation (alternating short runs, every step
timed), to show the callback's overhead. Writes `bench_out/bench_finetune.{md,json,png}` (`--overhead-only` runs
just the overhead check, into `bench_out/bench_finetune_overhead.{md,json}`).

Run from the repository root (about an hour on 2 cores):

    python -m scripts.benchmarks.bench_finetune
    python -m scripts.benchmarks.bench_finetune --fractions 0.25 --steps 60 --overhead-rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import hfprune  # noqa: E402
from scripts.benchmarks import fortunes  # noqa: E402
from scripts.benchmarks.bench import calibration_batches, mean_test_length  # noqa: E402
from scripts.benchmarks.report import plot_accuracy, run_header, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ONESHOT_RECIPE = ROOT / "recipes" / "bert-heads-ffn-fisher.yaml"
GRADUAL_RECIPE = ROOT / "recipes" / "bert-gradual-fisher.yaml"
METHODS = ("oneshot+finetune", "gradual+distill", "iterative+distill")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", default="0.4,0.25,0.15", help="FLOPs fractions to keep")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {list(METHODS)}")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every method")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (linear warm-up and decay)")
    parser.add_argument("--num-samples", type=int, default=512, help="calibration examples of the one-shot step")
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    parser.add_argument("--overhead-steps", type=int, default=60, help="steps per timed run of the overhead check")
    parser.add_argument("--overhead-only", action="store_true", help="only the callback overhead check")
    parser.add_argument("--overhead-rounds", type=int, default=2,
                        help="counted alternating runs per variant, after one warm-up round (0: skip)")
    parser.add_argument("--model-dir", default="out/minilm-fortunes", help="cache of the fine-tuned dense model")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs of the dense model")
    parser.add_argument("--latency-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=24, help="timed passes per model (each on the next test batch)")
    parser.add_argument("--out-dir", default="bench_out")
    return parser.parse_args(argv)


def train_split(data, tokenizer):
    split = fortunes.tokenize(data["train"], tokenizer).rename_column("label", "labels")
    return split.remove_columns(["text", "length"])


def fine_tune(model, tokenizer, train, args, steps: int, callbacks=()) -> float:
    """Train `model` in place for `steps` steps with the benchmark's Trainer settings; returns the seconds taken."""
    training_args = transformers.TrainingArguments(
        output_dir=str(Path(args.out_dir) / "trainer"), max_steps=steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=max(1, steps // 16), weight_decay=0.01, lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length", logging_steps=50, save_strategy="no", report_to=[], seed=0,
        use_cpu=True, disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
        data_collator=transformers.DataCollatorWithPadding(tokenizer), callbacks=list(callbacks),
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def prune_oneshot(model, fraction, context) -> None:
    """Prune `model` in place to `fraction` of its current FLOPs with the shipped one-shot recipe, calibrated on
    every calibration batch."""
    recipe = replace(hfprune.Recipe.load(ONESHOT_RECIPE), target={"flops": fraction},
                     seq_len=context["seq_len"], num_samples=10**9)
    hfprune.prune(model, recipe, calibration=context["calibration"])


def oneshot_then_finetune(dense, fraction, context) -> tuple[torch.nn.Module, float]:
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    prune_oneshot(model, fraction, context)
    fine_tune(model, context["tokenizer"], context["train"], context["args"], context["args"].steps)
    return model, time.perf_counter() - start


def gradual_with_distillation(dense, fraction, context) -> tuple[torch.nn.Module, float]:
    model = copy.deepcopy(dense)
    recipe = replace(hfprune.Recipe.load(GRADUAL_RECIPE), target={"flops": fraction})
    callback = hfprune.PruningCallback(recipe, seq_len=context["seq_len"])
    seconds = fine_tune(model, context["tokenizer"], context["train"], context["args"], context["args"].steps,
                        callbacks=[callback])
    return model, seconds


def iterative_with_distillation(dense, fraction, context) -> tuple[torch.nn.Module, float]:
    """Two one-shot cuts, each followed by half the steps of fine-tuning with the dense model as teacher
    (`hfprune.Distiller`): first to fraction^(2/3) of the FLOPs rounded to a tenth (40% on the way to 25%), then
    to the target, the second half at a fifth of the learning rate: a model that already fits the training split
    closely is easily pushed off the test set's optimum."""
    model, args = copy.deepcopy(dense), context["args"]
    dense_flops = hfprune.count(dense, seq_len=context["seq_len"]).flops
    start = time.perf_counter()
    for stage, lr in ((round(fraction ** (2 / 3), 1), args.lr), (fraction, args.lr / 5)):
        prune_oneshot(model, stage * dense_flops / hfprune.count(model, seq_len=context["seq_len"]).flops, context)
        distiller = hfprune.Distiller(model, {"alpha": 0.5, "temperature": 2.0}, teacher=dense)
        fine_tune(model, context["tokenizer"], context["train"], argparse.Namespace(**{**vars(args), "lr": lr}),
                  args.steps // 2)
        distiller.detach()
    return model, time.perf_counter() - start


RUNNERS = {"oneshot+finetune": oneshot_then_finetune, "gradual+distill": gradual_with_distillation,
           "iterative+distill": iterative_with_distillation}


class StepTimer(transformers.TrainerCallback):
    """Wall time of every optimizer step, from `on_step_begin` to `on_step_end`. PruningCallback puts itself first
    in the Trainer's callback list, so its own `on_step_end` work (score accumulation, searches) is inside."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


def callback_overhead(dense, context) -> dict[str, float]:
    """Mean seconds per training step without the callback, with it, and with it plus distillation.

    Each variant trains `--overhead-steps` steps with the shipped gradual recipe (its schedule scaled to the
    run, so searches fall inside the window; without the shrink), and the variants alternate,
    round after round, so machine noise hits them alike; a first, uncounted round warms the process up. Steps are
    timed one by one (`StepTimer`); the first two of each run are left out, as is the Trainer's start-up.
    """
    args = context["args"]
    recipe = replace(hfprune.Recipe.load(GRADUAL_RECIPE), target={"flops": 0.4})
    # Without the shrink: the overhead is the cost of running the callback on the model, not of a smaller model.
    recipe = replace(recipe, schedule=replace(recipe.schedule, shrink=None))
    variants = {
        "without callback": lambda: [],
        "with callback": lambda: [
            hfprune.PruningCallback(replace(recipe, distill={"alpha": 0.0}), seq_len=context["seq_len"])],
        "with callback + distillation": lambda: [hfprune.PruningCallback(recipe, seq_len=context["seq_len"])],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.overhead_rounds + 1):
        for name, callbacks in variants.items():
            timer = StepTimer()
            fine_tune(copy.deepcopy(dense), context["tokenizer"], context["train"], args, args.overhead_steps,
                      [timer, *callbacks()])
            if round_ > 0:  # the first round warms the process up (allocator, caches) and is not counted
                times[name] += timer.seconds[2:]
            print(f"overhead: {name:<30} {statistics.mean(timer.seconds[2:]):.3f} s/step", flush=True)
    return {name: statistics.mean(values) for name, values in times.items()}


def run(args) -> tuple[list[dict], dict[str, float]]:
    model_dir = fortunes.finetune(args.model_dir, epochs=args.epochs)
    data = fortunes.load_fortunes()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    context = {
        "args": args, "tokenizer": tokenizer, "train": train_split(data, tokenizer),
        "calibration": calibration_batches(data, tokenizer, args.num_samples, 0, args.calibration_batch_size),
        "seq_len": mean_test_length(data, tokenizer),
    }
    dense_flops = hfprune.count(dense, seq_len=context["seq_len"]).flops
    dense_accuracy = fortunes.evaluate_accuracy(dense, data["test"], tokenizer)
    print(f"dense: test accuracy {dense_accuracy:.4f}", flush=True)
    rows = [{"method": "dense", "fraction": 1.0, "flops_kept": 1.0, "accuracy": dense_accuracy, "speedup": 1.0,
             "train_s": 0.0}]
    for fraction in [] if args.overhead_only else [float(f) for f in args.fractions.split(",")]:
        pruned = {}
        for name in args.methods.split(","):
            model, seconds = RUNNERS[name](dense, fraction, context)
            model.eval()
            accuracy = fortunes.evaluate_accuracy(model, data["test"], tokenizer)
            flops_kept = hfprune.count(model, seq_len=context["seq_len"]).flops / dense_flops
            pruned[name] = model
            rows.append({"method": name, "fraction": fraction, "flops_kept": flops_kept, "accuracy": accuracy,
                         "train_s": seconds})
            print(f"{fraction:.0%} {name:<18} acc {accuracy:.4f}  FLOPs kept {flops_kept:.3f}  {seconds:.0f}s",
                  flush=True)
        timed = fortunes.measure_speedups({"dense": dense, **pruned}, tokenizer, data["test"]["text"],
                                          batch_size=args.latency_batch_size, repeats=args.repeats)
        for row in rows:
            if row["fraction"] == fraction:
                row["speedup"] = timed[row["method"]][1]
    overhead = callback_overhead(dense, context) if args.overhead_rounds > 0 else {}
    return rows, overhead


def markdown(rows: list[dict], overhead: dict[str, float], args) -> str:
    dense = rows[0]
    lines = [
        f"Every method trains {args.steps} steps (batch {args.batch_size}, peak lr {args.lr}).",
        "",
        "| method | FLOPs kept | test accuracy | Δ vs dense | speedup | speedup / FLOPs ratio | wall time |",
        "|---|--:|--:|--:|--:|--:|--:|",
        f"| dense | 1.000 | {dense['accuracy']:.2%} | — | 1.00x | — | — |",
    ]
    for row in rows[1:]:
        lines.append(
            f"| {row['method']} | {row['flops_kept']:.3f} | {row['accuracy']:.2%} | "
            f"{(row['accuracy'] - dense['accuracy']) * 100:+.1f} | {row['speedup']:.2f}x | "
            f"{row['speedup'] * row['flops_kept']:.2f} | {row['train_s']:.0f} s |"
        )
    if overhead:
        base = overhead["without callback"]
        lines += ["", f"Training step time, {args.overhead_steps}-step runs alternated {args.overhead_rounds} times "
                      "(mean of the timed steps):", "", "| Trainer | s / step | vs without |", "|---|--:|--:|"]
        lines += [f"| {name} | {seconds:.3f} | {seconds / base - 1:+.1%} |" for name, seconds in overhead.items()]
    return "\n".join(lines)


def goals(rows: list[dict], overhead: dict[str, float]) -> list[str]:
    dense = rows[0]["accuracy"]
    at_quarter = [r["accuracy"] for r in rows[1:] if r["fraction"] == 0.25]
    lines = []
    if at_quarter:
        gap = (dense - max(at_quarter)) * 100
        verdict = "PASS" if gap <= 2 else "FAIL"
        lines.append(f"- 25% FLOPs: best within 2 points of dense: {gap:.1f} points -> {verdict}")
    if len(rows) > 1:
        efficiency = min(r["speedup"] * r["flops_kept"] for r in rows[1:])
        lines.append(f"- speedup >= 0.9x the FLOPs ratio: lowest {efficiency:.2f} -> "
                     f"{'PASS' if efficiency >= 0.9 else 'FAIL'}")
    if overhead:
        extra = overhead["with callback"] / overhead["without callback"] - 1
        lines.append(f"- callback overhead per step <= 5%: {extra:+.1%} -> {'PASS' if extra <= 0.05 else 'FAIL'}")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    rows, overhead = run(args)
    text = "\n".join([run_header(__file__, start), "", markdown(rows, overhead, args), "", *goals(rows, overhead)])
    stem = "bench_finetune_overhead" if args.overhead_only else "bench_finetune"
    path = write_report(args.out_dir, stem, text, {"rows": rows, "overhead": overhead})
    if not args.overhead_only:
        plot_accuracy(rows, path.with_suffix(".png"),
             title=f"all-MiniLM-L6-v2 on fortunes topics, pruned with {args.steps} training steps")
    print(f"wrote {path}.*")

if __name__ == "__main__":
    main()
