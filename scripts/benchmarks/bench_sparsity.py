"""Benchmark: 50% unstructured and 2:4 weight sparsity by magnitude, Wanda and SparseGPT, one-shot and fine-tuned.

all-MiniLM-L6-v2 fine-tuned on the fortunes topics (the dense model of `scripts/benchmarks/bench.py`, cached in
`out/minilm-fortunes`). For each pattern (50% unstructured, 2:4 = 2 zeros in every 4 consecutive inputs) and
each criterion (magnitude, wanda, sparsegpt), a copy of the dense model is:

1. pruned one-shot with `hfprune.prune(model, Recipe(structures=[weights], weights={...}), calibration)` on 512
   labelled training examples (the calibration batches of `scripts/benchmarks/bench.py`; magnitude needs none): test
   accuracy, prune wall time and the measured sparsity of the prunable linears (`hfprune.weight_sparsity`);
2. fine-tuned for `--steps` Trainer steps (default one epoch of the train split at batch 32 = 150 steps; the
   Trainer settings of `scripts/benchmarks/bench_finetune.py`) with `hfprune.PruningCallback` and the recipe
   `structures: [weights], weights: {sparsity: 0, criterion: magnitude}`: `WeightMasks` takes the zeros already
   there as pruned, the one-shot schedule's single pruning step (step 1) prunes nothing more (sparsity 0), and
   the pruned weights are set back to 0 after every optimizer step. Test accuracy again, and a check that every
   weight zeroed one-shot is still exactly 0, that the measured sparsity did not change and (2:4) that every
   group of 4 still holds 2 zeros.

SparseGPT's peak memory, per pattern, is measured in a fresh process (`--measure-memory`, started by the
benchmark) that loads the dense model and the calibration batches, runs one dense forward pass over every
calibration batch (so the model, the data and the activations of a whole forward pass are in the baseline),
reads the peak resident set size as the baseline, runs the SparseGPT one-shot pass and reads the peak again. The
peak is `VmHWM` of `/proc/self/status`, not `getrusage(RUSAGE_SELF).ru_maxrss`: a child forked from the
benchmark inherits the parent's resident size into `ru_maxrss` (several GiB after the fine-tuning runs, which
would hide SparseGPT entirely); both are in the JSON. Reported: the model's own size (parameters + buffers), the
baseline, the resident size just before the pass, the new peak, the extra (peak - baseline) and its ratio to the
largest layer's working set, defined as what `hfprune/calibration/capture.py` and `hfprune/sparsity/` must hold to prune
the linear with the most inputs (the FFN output projection, 1536 inputs):

    working set = its Hessian H, float32 in x in
                + its weight as the float32 (out x in) copy that the criterion updates
                + the block's calibration inputs: the arguments captured for the layer (block) on every
                  calibration batch (hidden states and attention mask), kept while the block is pruned,
                  measured as the bytes of those tensors.

The block's outputs are not in it: each re-run of the block over one batch is dropped at once (their size is
already in the baseline's forward pass). Neither are SparseGPT's own in x in temporaries (damped H, the identity,
the Cholesky factor, its inverse and the upper factor of the inverse) nor the copy of the original weight kept
for the fallback: those count against the budget, which is 2x the working set. Goal: extra < 2x.

Writes `bench_out/bench_sparsity.{md,json,png}` (png: test accuracy per criterion, one-shot vs fine-tuned, one
panel per pattern, dense as a line).

Run from the repository root (about 30 minutes on 2 idle cores):

    python -m scripts.benchmarks.bench_sparsity
    python -m scripts.benchmarks.bench_sparsity --criteria wanda --patterns 2:4 --steps 2 --limit-test 64  # smoke
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

import hfprune  # noqa: E402
from scripts.benchmarks import fortunes  # noqa: E402
from scripts.benchmarks.bench import calibration_batches  # noqa: E402
from scripts.benchmarks.bench_finetune import fine_tune, train_split  # noqa: E402
from scripts.benchmarks.report import run_header, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

CRITERIA = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("unstructured", "2:4")
SPARSITY = 0.5  # of the unstructured pattern; 2:4 implies 0.5 too


def keep_zeros() -> hfprune.PruningCallback:
    """The callback after a one-shot pass: the zeros already there become the masks (`WeightMasks`), the one-shot
    schedule's single pruning step prunes to sparsity 0 (nothing more), and the masks are re-applied after every
    optimizer step."""
    return hfprune.PruningCallback(
        hfprune.Recipe(structures=["weights"], weights={"sparsity": 0.0, "criterion": "magnitude"},
                       schedule={"type": "oneshot", "start": 1})
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--criteria", default=",".join(CRITERIA), help=f"subset of {list(CRITERIA)}")
    parser.add_argument("--patterns", default=",".join(PATTERNS), help=f"subset of {list(PATTERNS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps after the one-shot pass (default: one epoch, ceil(train / batch))")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (linear warm-up and decay)")
    parser.add_argument("--num-samples", type=int, default=512, help="calibration examples (from train)")
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    parser.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test examples only")
    parser.add_argument("--no-memory", action="store_true", help="skip the SparseGPT peak-memory measurement")
    parser.add_argument("--measure-memory", action="store_true",
                        help="internal: measure SparseGPT's peak memory for the first pattern, print one JSON line")
    parser.add_argument("--model-dir", default="out/minilm-fortunes", help="cache of the fine-tuned dense model")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs of the dense model")
    parser.add_argument("--out-dir", default="bench_out")
    args = parser.parse_args(argv)
    for name, known in (("criteria", CRITERIA), ("patterns", PATTERNS)):
        bad = [v for v in getattr(args, name).split(",") if v not in known]
        if bad:
            parser.error(f"--{name}: unknown {bad}; choose from {list(known)}")
    return args


def weights_spec(pattern: str, criterion: str) -> dict:
    if pattern == "unstructured":
        return {"sparsity": SPARSITY, "pattern": "unstructured", "criterion": criterion}
    return {"pattern": pattern, "criterion": criterion}


def recipe_for(pattern: str, criterion: str, num_samples: int) -> hfprune.Recipe:
    return hfprune.Recipe(structures=["weights"], weights=weights_spec(pattern, criterion), num_samples=num_samples)


def weight_out_in(module) -> torch.Tensor:
    """A linear's weight as (out_features, in_features): transformers' `Conv1D` (GPT-2) stores it transposed."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def in_features(module) -> int:
    return weight_out_in(module).shape[1]


class _BlockReached(Exception):
    pass


@torch.no_grad()
def block_inputs(model, block, batches: list[dict]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) that `block` is called with on each batch: the forward pass stops at the block."""
    calls = []

    def capture(module, args, kwargs):
        calls.append((args, kwargs))
        raise _BlockReached

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**dense_inputs(batch))
            except _BlockReached:
                pass
    finally:
        handle.remove()
    return calls


def dense_inputs(batch: dict) -> dict:
    """A calibration batch without its labels (a forward pass for activations, not for a loss)."""
    return {name: value for name, value in batch.items() if name != "labels"}


def overall_sparsity(model) -> float:
    """Fraction of zeros over all prunable linears together (weighted by their sizes)."""
    targets = hfprune.weight_targets(model)
    zeros = sum(int((weight_out_in(t.module) == 0).sum()) for t in targets)
    return zeros / sum(t.module.weight.numel() for t in targets)


def zero_masks(model) -> dict[str, torch.Tensor]:
    return {t.name: (weight_out_in(t.module) == 0).clone() for t in hfprune.weight_targets(model)}


def pattern_holds(model, pattern: str) -> bool:
    """Every group of M consecutive inputs of every row has at least N zeros (True for unstructured)."""
    if pattern == "unstructured":
        return True
    n, m = (int(v) for v in pattern.split(":"))
    return all(bool(((weight_out_in(t.module) == 0).reshape(-1, m).sum(1) >= n).all())
               for t in hfprune.weight_targets(model))


# ------------------------------------------------------------------------------------------ peak memory


def _tensor_bytes(value, seen: set) -> int:
    if isinstance(value, torch.Tensor):
        key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return value.untyped_storage().nbytes()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    return 0


def _status_bytes(field: str) -> int | None:
    """A `/proc/self/status` memory field (`VmHWM`, `VmRSS`) in bytes; None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    """This process's peak resident set size: `VmHWM`, else `ru_maxrss` (KiB on Linux).

    `getrusage(RUSAGE_SELF).ru_maxrss` is not used first: it is the maximum of this address space's high-water
    mark and of the one replaced at exec, and a child forked from a large process starts with a copy of the
    parent's page tables, so the benchmark's own few GiB would show up as the child's baseline and hide
    everything after it. `VmHWM` belongs to the address space made at exec."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_memory(args) -> dict:
    """SparseGPT's peak memory above a baseline of model + data + one dense forward pass, in this process."""
    pattern = args.patterns.split(",")[0]
    data = fortunes.load_fortunes()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
    calibration = calibration_batches(data, tokenizer, args.num_samples, 0, args.calibration_batch_size)
    model_bytes = sum(p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()])
    with torch.no_grad():
        for batch in calibration:
            model(**dense_inputs(batch))
    gc.collect()
    baseline = _peak_rss_bytes()
    resident = _status_bytes("VmRSS")
    rusage_baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    hfprune.prune(model, recipe_for(pattern, "sparsegpt", args.num_samples), calibration)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    rusage_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The working set of the linear with the most inputs (measured after the peak was read: capturing the block's
    # inputs again here must not raise the peak).
    largest = max(hfprune.weight_targets(model), key=lambda t: (in_features(t.module), t.module.weight.numel()))
    width = in_features(largest.module)
    hessian = width * width * 4
    weight = largest.module.weight.numel() * 4
    inputs = _tensor_bytes(block_inputs(model, model.get_submodule(largest.layer_path), calibration), set())
    working_set = hessian + weight + inputs
    return {
        "pattern": pattern, "samples": sum(len(b["input_ids"]) for b in calibration), "prune_s": seconds,
        "model_bytes": model_bytes, "baseline_bytes": baseline, "peak_bytes": peak, "extra_bytes": peak - baseline,
        "resident_before_bytes": resident, "ru_maxrss_baseline_bytes": rusage_baseline,
        "ru_maxrss_peak_bytes": rusage_peak,
        "largest_layer": largest.name, "hessian_bytes": hessian, "weight_bytes": weight, "inputs_bytes": inputs,
        "working_set_bytes": working_set, "ratio": (peak - baseline) / working_set,
    }


def measure_memory_in_subprocess(pattern: str, args) -> dict:
    command = [sys.executable, "-m", "scripts.benchmarks.bench_sparsity", "--measure-memory", "--patterns", pattern,
               "--num-samples", str(args.num_samples), "--calibration-batch-size", str(args.calibration_batch_size),
               "--model-dir", str(Path(args.model_dir).resolve())]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ run


def run(args) -> dict:
    model_dir = fortunes.finetune(args.model_dir, epochs=args.epochs)
    args.model_dir = str(model_dir)
    data = fortunes.load_fortunes()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    test = data["test"] if args.limit_test is None else data["test"].select(range(min(args.limit_test,
                                                                                      len(data["test"]))))
    train = train_split(data, tokenizer)
    steps = args.steps if args.steps is not None else math.ceil(len(train) / args.batch_size)
    calibration = calibration_batches(data, tokenizer, args.num_samples, 0, args.calibration_batch_size)
    samples = sum(len(b["input_ids"]) for b in calibration)
    dense_accuracy = fortunes.evaluate_accuracy(dense, test, tokenizer)
    print(f"dense: test accuracy {dense_accuracy:.4f} on {len(test)} examples, sparsity "
          f"{overall_sparsity(dense):.4f}; calibration {samples} samples; fine-tuning {steps} steps", flush=True)
    rows = []
    for pattern in args.patterns.split(","):
        for criterion in args.criteria.split(","):
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            hfprune.prune(model, recipe_for(pattern, criterion, args.num_samples), calibration)
            prune_s = time.perf_counter() - start
            sparsity = overall_sparsity(model)
            oneshot = fortunes.evaluate_accuracy(model, test, tokenizer)
            print(f"{pattern:<12} {criterion:<9} one-shot: acc {oneshot:.4f}  sparsity {sparsity:.4f}  "
                  f"{prune_s:.1f}s", flush=True)
            pruned = zero_masks(model)
            train_s = fine_tune(model, tokenizer, train, args, steps, callbacks=[keep_zeros()])
            model.eval()
            finetuned = fortunes.evaluate_accuracy(model, test, tokenizer)
            after = overall_sparsity(model)
            zeros_kept = all(bool((weight_out_in(t.module)[pruned[t.name]] == 0).all())
                             for t in hfprune.weight_targets(model))
            row = {"pattern": pattern, "criterion": criterion, "sparsity": sparsity, "prune_s": prune_s,
                   "oneshot_accuracy": oneshot, "finetuned_accuracy": finetuned, "sparsity_after": after,
                   "zeros_kept": zeros_kept, "pattern_holds": pattern_holds(model, pattern), "train_s": train_s,
                   "per_layer_sparsity": hfprune.weight_sparsity(model)}
            rows.append(row)
            status = "kept" if zeros_kept and after == sparsity and row["pattern_holds"] else "CHANGED"
            print(f"{pattern:<12} {criterion:<9} fine-tuned: acc {finetuned:.4f}  sparsity {after:.4f} "
                  f"(zeros {status})  {train_s:.0f}s", flush=True)
    memory = []
    if "sparsegpt" in args.criteria.split(",") and not args.no_memory:
        for pattern in args.patterns.split(","):
            measured = measure_memory_in_subprocess(pattern, args)
            memory.append(measured)
            mib = {k: v / 2**20 for k, v in measured.items() if k.endswith("_bytes")}
            print(f"sparsegpt {pattern} memory: extra {mib['extra_bytes']:.1f} MiB over a baseline of "
                  f"{mib['baseline_bytes']:.0f} MiB; working set {mib['working_set_bytes']:.1f} MiB; "
                  f"ratio {measured['ratio']:.2f}", flush=True)
    return {"dense": {"accuracy": dense_accuracy, "test_examples": len(test)}, "steps": steps, "samples": samples,
            "rows": rows, "memory": memory}


# ------------------------------------------------------------------------------------------- outputs


def markdown(result: dict, args) -> str:
    dense = result["dense"]["accuracy"]
    mib = 2**20
    lines = [
        f"Test accuracy on {result['dense']['test_examples']} test examples. One-shot: calibration on "
        f"{result['samples']} training examples. Fine-tuned: {result['steps']} Trainer steps (batch {args.batch_size},"
        f" peak lr {args.lr}) with `PruningCallback` keeping the zeros.",
        "",
        "| pattern | criterion | sparsity | prune time | one-shot | Δ vs dense | fine-tuned | Δ vs dense "
        "| sparsity after FT | zeros kept | FT time |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
        f"| dense | — | 0.000 | — | {dense:.2%} | — | — | — | — | — | — |",
    ]
    for r in result["rows"]:
        kept = "yes" if r["zeros_kept"] and r["pattern_holds"] else "**no**"
        lines.append(
            f"| {r['pattern']} | {r['criterion']} | {r['sparsity']:.3f} | {r['prune_s']:.1f} s | "
            f"{r['oneshot_accuracy']:.2%} | {(r['oneshot_accuracy'] - dense) * 100:+.1f} | "
            f"{r['finetuned_accuracy']:.2%} | {(r['finetuned_accuracy'] - dense) * 100:+.1f} | "
            f"{r['sparsity_after']:.3f} | {kept} | {r['train_s']:.0f} s |"
        )
    if result["memory"]:
        lines += [
            "",
            "SparseGPT peak memory (fresh process; baseline = peak RSS after loading the model and the calibration "
            "data and one dense forward pass over it). Working set of the largest layer = its float32 Hessian + "
            "float32 weight copy + the block's captured calibration inputs.",
            "",
            "| pattern | largest layer | model size | baseline | resident before | peak | extra (peak - baseline) "
            "| working set (H + W + inputs) | extra / working set |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for m in result["memory"]:
            resident = m["resident_before_bytes"]
            lines.append(
                f"| {m['pattern']} | {m['largest_layer']} | {m['model_bytes'] / mib:.1f} MiB | "
                f"{m['baseline_bytes'] / mib:.0f} MiB | {'—' if resident is None else f'{resident / mib:.0f} MiB'} | "
                f"{m['peak_bytes'] / mib:.0f} MiB | "
                f"{m['extra_bytes'] / mib:.1f} MiB | {m['working_set_bytes'] / mib:.1f} MiB "
                f"({m['hessian_bytes'] / mib:.1f} + {m['weight_bytes'] / mib:.1f} + {m['inputs_bytes'] / mib:.1f}) | "
                f"{m['ratio']:.2f} |"
            )
    return "\n".join(lines)


def goals(result: dict) -> list[str]:
    dense = result["dense"]["accuracy"]
    rows = result["rows"]
    lines = []

    def best(pattern, criteria, key):
        found = [r for r in rows if r["pattern"] == pattern and r["criterion"] in criteria]
        return max(found, key=lambda r: r[key]) if found else None

    top = best("unstructured", ("wanda", "sparsegpt"), "oneshot_accuracy")
    if top is not None:
        gap = (dense - top["oneshot_accuracy"]) * 100
        lines.append(f"- one-shot 50% unstructured within 1 point of dense with Wanda or SparseGPT: best "
                     f"{top['criterion']}, {-gap:+.1f} points vs dense -> {'PASS' if gap <= 1 else 'FAIL'}")
    top = best("2:4", CRITERIA, "finetuned_accuracy")
    if top is not None:
        gap = (dense - top["finetuned_accuracy"]) * 100
        lines.append(f"- 2:4 within 2 points of dense after fine-tuning: best {top['criterion']}, {-gap:+.1f} points "
                     f"vs dense -> {'PASS' if gap <= 2 else 'FAIL'}")
    if result["memory"]:
        worst = max(result["memory"], key=lambda m: m["ratio"])
        lines.append(f"- SparseGPT peak memory above the baseline < 2x the largest layer's working set: "
                     f"{worst['ratio']:.2f}x ({worst['pattern']}) -> {'PASS' if worst['ratio'] < 2 else 'FAIL'}")
    if rows:
        kept = all(r["zeros_kept"] and r["pattern_holds"] and r["sparsity_after"] == r["sparsity"] for r in rows)
        lines.append(f"- sparsity unchanged by fine-tuning with the callback (every zero kept): "
                     f"{'PASS' if kept else 'FAIL'}")
    return lines


def plot(result: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = list(dict.fromkeys(r["pattern"] for r in result["rows"]))
    figure, axes = plt.subplots(1, len(patterns), figsize=(4 * len(patterns) + 1, 4.2), sharey=True, squeeze=False)
    dense = result["dense"]["accuracy"] * 100
    for axis, pattern in zip(axes[0], patterns, strict=True):
        rows = [r for r in result["rows"] if r["pattern"] == pattern]
        x = range(len(rows))
        width = 0.38
        oneshot = axis.bar([i - width / 2 for i in x], [r["oneshot_accuracy"] * 100 for r in rows], width,
                           label="one-shot")
        tuned = axis.bar([i + width / 2 for i in x], [r["finetuned_accuracy"] * 100 for r in rows], width,
                         label=f"+ {steps} steps fine-tuning")
        for bars in (oneshot, tuned):
            axis.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        axis.axhline(dense, color="black", linewidth=0.8, label=f"dense ({dense:.1f})")
        axis.set_xticks(list(x), [r["criterion"] for r in rows])
        axis.set_title("50% unstructured" if pattern == "unstructured" else f"{pattern} semi-structured")
        axis.grid(axis="y", alpha=0.3)
    # Zoomed on the accuracies (the bars do not start at 0): a point or two is what the goals are about.
    values = [dense] + [r[k] * 100 for r in result["rows"] for k in ("oneshot_accuracy", "finetuned_accuracy")]
    axes[0][0].set_ylim(max(0, math.floor(min(values)) - 5), min(100, math.ceil(max(values)) + 3))
    axes[0][0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    figure.suptitle("all-MiniLM-L6-v2 on fortunes topics, 50% weight sparsity", fontsize=10)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.measure_memory:
        print(json.dumps(measure_memory(args)))
        return
    start = time.perf_counter()
    result = run(args)
    text = "\n".join([run_header(__file__, start), "", markdown(result, args), "", *goals(result)])
    path = write_report(args.out_dir, "bench_sparsity", text, result)
    if result["rows"]:
        plot(result, path.with_suffix(".png"), result["steps"])
    print(f"wrote {path}.md, .json, .png")


if __name__ == "__main__":
    main()
