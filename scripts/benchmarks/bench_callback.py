"""Benchmark: `PruningCallback` with only a target, on every task of the suite, against its former defaults.

For each task of `scripts/benchmarks/tasks.py`, the fine-tuned all-MiniLM-L6-v2 of `scripts/benchmarks/bench.py`
(cached in `out/minilm-<task>`) trains `--epochs` more epochs with a plain `transformers.Trainer` (batch 32,
linear decay from `--lr`) and `hfprune.PruningCallback(Recipe(target={"flops": f}))`:

- `defaults`: nothing but the target, i.e. the library's defaults (a cubic schedule from 10 % to 70 % of
  training re-pruning every 10 steps, distillation from a frozen copy of the dense model);
- `one-shot without teacher`: the defaults before this benchmark: one cut after the first step, no distillation
  (`schedule: {type: oneshot, start: 1}`, `distill: {alpha: 0}`);
- on request (`--variants`): `early` (cubic from 5 % to 40 % of training, more recovery after the last cut),
  `early alpha 0.9` (and a stronger teacher), `early hidden` (and hidden-state distillation).

Reports test accuracy against the dense model's and the training time; writes `bench_out/bench_callback.{md,json}`.
Finished runs are kept in `bench_out/bench_callback.partial.json` and not repeated (delete it to start afresh).

Run from the repository root (about 25 minutes on 2 cores):

    python -m scripts.benchmarks.bench_callback
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import hfprune  # noqa: E402
from scripts.benchmarks import fortunes, tasks  # noqa: E402
from scripts.benchmarks.bench import mean_test_length  # noqa: E402
from scripts.benchmarks.report import run_header, write_report  # noqa: E402

VARIANTS = {
    "defaults": {},
    "one-shot without teacher": {"schedule": {"type": "oneshot", "start": 1}, "distill": {"alpha": 0.0}},
    "early": {"schedule": {"type": "cubic", "every": 10, "start": 0.05, "end": 0.4}},
    "early alpha 0.9": {"schedule": {"type": "cubic", "every": 10, "start": 0.05, "end": 0.4},
                        "distill": {"alpha": 0.9}},
    "early hidden": {"schedule": {"type": "cubic", "every": 10, "start": 0.05, "end": 0.4},
                     "distill": {"alpha": 0.5, "hidden": 1.0}},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(tasks.TASKS), help=f"subset of {list(tasks.TASKS)}")
    parser.add_argument("--variants", default="defaults,one-shot without teacher", help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--fraction", type=float, default=0.25, help="FLOPs fraction kept")
    parser.add_argument("--epochs", type=float, default=3, help="training epochs with the callback")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out-dir", default="bench_out")
    return parser.parse_args(argv)


def train_with_callback(model, tokenizer, data, recipe, seq_len: int, args) -> float:
    train = fortunes.tokenize(data["train"], tokenizer).rename_column("label", "labels").remove_columns(
        ["text", "length"])
    steps = math.ceil(len(train) / args.batch_size * args.epochs)
    training_args = transformers.TrainingArguments(
        output_dir=str(Path(args.out_dir) / "trainer"), max_steps=steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=round(0.06 * steps), weight_decay=0.01,
        train_sampling_strategy="group_by_length", logging_steps=50, save_strategy="no", report_to=[], seed=0,
        use_cpu=True, disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        callbacks=[hfprune.PruningCallback(recipe, seq_len=seq_len)],
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    partial = Path(args.out_dir) / "bench_callback.partial.json"
    rows = json.loads(partial.read_text()) if partial.exists() else []
    for task in args.tasks.split(","):
        model_dir = fortunes.finetune(f"out/minilm-{task}", epochs=3, task=task)
        data = tasks.load_task(task)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        seq_len = mean_test_length(data, tokenizer)
        dense_accuracy = fortunes.evaluate_accuracy(dense, data["test"], tokenizer)
        for variant in args.variants.split(","):
            if any(r["task"] == task and r["variant"] == variant and r["fraction"] == args.fraction for r in rows):
                continue
            model = copy.deepcopy(dense)
            recipe = hfprune.Recipe(target={"flops": args.fraction}, **VARIANTS[variant])
            seconds = train_with_callback(model, tokenizer, data, recipe, seq_len, args)
            accuracy = fortunes.evaluate_accuracy(model, data["test"], tokenizer)
            flops = hfprune.count(model, seq_len=seq_len).flops / hfprune.count(dense, seq_len=seq_len).flops
            rows.append({"task": task, "variant": variant, "fraction": args.fraction, "dense": dense_accuracy,
                         "accuracy": accuracy, "flops_kept": flops, "train_s": seconds})
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(rows, indent=1))
            print(f"{task} {variant}: {accuracy:.4f} (dense {dense_accuracy:.4f}), FLOPs {flops:.3f}, {seconds:.0f} s",
                  flush=True)
    lines = [run_header(__file__, start), "",
             f"`PruningCallback` to {args.fraction:.0%} FLOPs, {args.epochs:g} epochs, batch {args.batch_size}: "
             "test accuracy (%)", "",
             "| task | dense | " + " | ".join(args.variants.split(",")) + " |",
             "|---|--:|" + "--:|" * len(args.variants.split(","))]
    for task in args.tasks.split(","):
        mine = {r["variant"]: r for r in rows if r["task"] == task and r["fraction"] == args.fraction}
        cells = " | ".join(f"{r['accuracy'] * 100:.1f} ({(r['accuracy'] - r['dense']) * 100:+.1f}), "
                           f"{r['train_s']:.0f} s" for r in mine.values())
        lines.append(f"| {task} | {next(iter(mine.values()))['dense'] * 100:.1f} | {cells} |")
    gaps = [(r["dense"] - r["accuracy"]) * 100 for r in rows if r["variant"] == "defaults"
            and r["fraction"] == args.fraction and r["task"] in args.tasks.split(",")]
    if gaps:
        lines += ["", f"- defaults within 2 points of dense on every task: worst {max(gaps):.1f} points below -> "
                  f"{'PASS' if max(gaps) <= 2 else 'FAIL'}"]
    write_report(args.out_dir, "bench_callback", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
