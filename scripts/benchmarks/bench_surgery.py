"""Benchmark: does physically pruning a BERT-base-shaped model buy the speedup its FLOPs promise?

Builds a randomly initialised `BertModel` with `BertConfig()` defaults (hidden 768, 12 layers, 12 heads,
FFN 3072; no download) and, from deep copies of it, these variants made with `hfprune.remove_heads` and
`hfprune.remove_neurons`:

- uniform 2/3, 1/2, 1/4 of the encoder FLOPs: every layer keeps round(12 f) heads and round(3072 f) neurons
  (8/2048, 6/1536, 3/768), which is exactly that fraction of `hfprune.count(...).flops`;
- non-uniform ~1/2: seeded random per-layer head counts and neuron counts (neurons multiples of 8) aimed at
  half the FLOPs; the exact fraction is reported.

Which heads and neurons go is random (seeded). Latency is the median of repeated forward passes at one
sequence length and several batch sizes, timed by `hfprune.measure_latency` (under `torch.inference_mode()`,
CUDA-synchronized, with warm-up passes first). Variants are timed round-robin (the starting variant rotates every
round) so machine noise hits them all alike.

For each variant and batch size it reports the kept FLOPs fraction, params, median latency, measured speedup
(the median over rounds of dense latency / variant latency in the same round), FLOPs ratio (dense FLOPs /
variant FLOPs) and efficiency = speedup / FLOPs ratio, with PASS/FAIL against the targets (>= 0.9 uniform,
>= 0.85 non-uniform). FLOPs cover attention and FFN only (what pruning changes); embeddings, LayerNorms,
activations and the pooler are not in them.

Writes a markdown table to stdout and to `bench_out/bench_surgery.md`, and the raw numbers (every timing)
to `bench_out/bench_surgery.json`.

Run from the repository root:

    python -m scripts.benchmarks.bench_surgery          # CPU, fp32, seq 128, batch 1 and 8
    python -m scripts.benchmarks.bench_surgery --repeats 30 --dtype bfloat16 --batch-sizes 1,8,32 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

import hfprune

TARGET_UNIFORM = 0.9
TARGET_NON_UNIFORM = 0.85
NEURON_MULTIPLE = 8


@dataclass
class Variant:
    """One model to time: its name, kept units per layer, counts, and (after timing) its latencies."""

    name: str
    kind: str  # "dense", "uniform" or "non-uniform"
    heads: list[int]
    neurons: list[int]
    model: torch.nn.Module = field(repr=False)
    flops: int = 0
    params: int = 0
    times_ms: dict[int, list[float]] = field(default_factory=dict)
    speedups: dict[int, float] = field(default_factory=dict)  # paired: median of per-round dense / variant


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=12, help="timed passes per variant and batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per variant and batch size")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(args: argparse.Namespace) -> str:
    import transformers

    device = cpu_model()
    if args.device == "cuda":
        device = f"{torch.cuda.get_device_name()} (host CPU: {device})"
    return (
        f"{device}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, hfprune {hfprune.__version__}, Python {platform.python_version()}"
    )


def build_dense(args: argparse.Namespace) -> BertModel:
    torch.manual_seed(args.seed)
    model = BertModel(BertConfig())
    return model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def site_names(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Attention and FFN site names, in layer order."""
    all_sites = hfprune.sites(model)
    return (
        [name for name, kind in all_sites.items() if kind == "attention"],
        [name for name, kind in all_sites.items() if kind == "ffn"],
    )


def make_variant(dense, name: str, kind: str, heads: list[int], neurons: list[int], rng) -> Variant:
    """Deep-copy `dense` and remove random heads/neurons so layer i keeps heads[i] and neurons[i]."""
    model = copy.deepcopy(dense)
    attention_sites, ffn_sites = site_names(model)
    counts = hfprune.count(model)
    remove_heads, remove_neurons = {}, {}
    for site, keep in zip(attention_sites, heads, strict=False):
        total = counts.sites[site].units
        remove_heads[site] = sorted(rng.sample(range(total), total - keep))
    for site, keep in zip(ffn_sites, neurons, strict=False):
        total = counts.sites[site].units
        remove_neurons[site] = sorted(rng.sample(range(total), total - keep))
    hfprune.remove_heads(model, remove_heads)
    hfprune.remove_neurons(model, remove_neurons)
    return Variant(name, kind, heads, neurons, model)


def non_uniform_shape(dense, target: float, seq_len: int, rng) -> tuple[list[int], list[int]]:
    """Random per-layer kept head and neuron counts whose FLOPs come close to `target` of the dense model's.

    Heads are drawn per layer; the FFN gets whatever FLOPs the heads leave, split over layers with random
    weights and rounded to multiples of 8 neurons.
    """
    counts = hfprune.count(dense, seq_len=seq_len)
    attention_sites, ffn_sites = site_names(dense)
    layers = len(attention_sites)
    max_heads = counts.sites[attention_sites[0]].units
    max_neurons = counts.sites[ffn_sites[0]].units
    head_cost = [counts.sites[s].flops_per_unit + counts.sites[s].flops_per_kv_unit for s in attention_sites]
    neuron_cost = [counts.sites[s].flops_per_unit for s in ffn_sites]

    heads = [rng.randint(max(1, max_heads // 4), max_heads - 1) for _ in range(layers)]
    budget = target * counts.flops - sum(h * c for h, c in zip(heads, head_cost, strict=False))
    weights = [rng.uniform(0.4, 1.6) for _ in range(layers)]
    total_weight = sum(weights)
    neurons = []
    for weight, cost in zip(weights, neuron_cost, strict=False):
        ideal = budget * weight / total_weight / cost
        rounded = NEURON_MULTIPLE * round(ideal / NEURON_MULTIPLE)
        neurons.append(min(max_neurons, max(NEURON_MULTIPLE, rounded)))
    return heads, neurons


def build_variants(args: argparse.Namespace) -> list[Variant]:
    rng = random.Random(args.seed)
    dense = build_dense(args)
    attention_sites, ffn_sites = site_names(dense)
    counts = hfprune.count(dense, seq_len=args.seq_len)
    layers = len(attention_sites)
    max_heads = counts.sites[attention_sites[0]].units
    max_neurons = counts.sites[ffn_sites[0]].units

    variants = [Variant("dense", "dense", [max_heads] * layers, [max_neurons] * layers, dense)]
    for label, fraction in [("2/3", 2 / 3), ("1/2", 1 / 2), ("1/4", 1 / 4)]:
        heads, neurons = round(max_heads * fraction), round(max_neurons * fraction)
        variants.append(
            make_variant(dense, f"uniform {label}", "uniform", [heads] * layers, [neurons] * layers, rng)
        )
    heads, neurons = non_uniform_shape(dense, 0.5, args.seq_len, rng)
    variants.append(make_variant(dense, "non-uniform ~1/2", "non-uniform", heads, neurons, rng))

    for variant in variants:
        count = hfprune.count(variant.model, seq_len=args.seq_len)
        variant.flops, variant.params = count.flops, count.params
        attention_sites, ffn_sites = site_names(variant.model)
        assert [count.sites[s].units for s in attention_sites] == variant.heads, variant.name
        assert [count.sites[s].units for s in ffn_sites] == variant.neurons, variant.name
    return variants


def time_variants(variants: list[Variant], args: argparse.Namespace) -> None:
    """Fill `times_ms[batch]` and `speedups[batch]` of every variant with `hfprune.measure_latency`: variants take
    turns within each round, starting one later each round."""
    generator = torch.Generator().manual_seed(args.seed)
    vocab = variants[0].model.config.vocab_size
    for batch in args.batch_sizes:
        print(f"timing batch {batch}: {args.repeats} rounds of {len(variants)} variants", file=sys.stderr, flush=True)
        input_ids = torch.randint(0, vocab, (batch, args.seq_len), generator=generator).to(args.device)
        result = hfprune.measure_latency(
            {variant.name: variant.model for variant in variants}, {"input_ids": input_ids},
            runs=args.repeats, warmup=args.warmup,
        )
        speedups = result.speedups(variants[0].name)
        for variant in variants:
            variant.times_ms[batch] = [seconds * 1000 for seconds in result.rounds[variant.name]]
            variant.speedups[batch] = speedups[variant.name]


def shape_text(values: list[int]) -> str:
    if len(set(values)) == 1:
        return str(values[0])
    return f"{min(values)}–{max(values)}"


def result_rows(variants: list[Variant], args: argparse.Namespace) -> list[dict]:
    dense = variants[0]
    rows = []
    for batch in args.batch_sizes:
        for variant in variants:
            median_ms = statistics.median(variant.times_ms[batch])
            speedup = variant.speedups[batch]
            flops_ratio = dense.flops / variant.flops
            efficiency = speedup / flops_ratio
            target = {"uniform": TARGET_UNIFORM, "non-uniform": TARGET_NON_UNIFORM}.get(variant.kind)
            rows.append(
                {
                    "variant": variant.name,
                    "kind": variant.kind,
                    "batch": batch,
                    "heads": shape_text(variant.heads),
                    "neurons": shape_text(variant.neurons),
                    "flops_kept": variant.flops / dense.flops,
                    "params": variant.params,
                    "median_ms": median_ms,
                    "min_ms": min(variant.times_ms[batch]),
                    "speedup": speedup,
                    "flops_ratio": flops_ratio,
                    "efficiency": efficiency,
                    "target": target,
                    "verdict": "—" if target is None else ("PASS" if efficiency >= target else "FAIL"),
                }
            )
    return rows


def markdown(rows: list[dict], variants: list[Variant], args: argparse.Namespace, header: list[str]) -> str:
    lines = [*header, ""]
    lines.append(
        "| variant | batch | heads/layer | neurons/layer | FLOPs kept | params (M) | median ms | min ms "
        "| speedup | FLOPs ratio | efficiency | target | result |"
    )
    lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|")
    for r in rows:
        target = "—" if r["target"] is None else f"≥ {r['target']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['heads']} | {r['neurons']} | {r['flops_kept']:.4f} "
            f"| {r['params'] / 1e6:.1f} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['speedup']:.3f} "
            f"| {r['flops_ratio']:.3f} | {r['efficiency']:.3f} | {target} | {r['verdict']} |"
        )
    for variant in variants:
        if variant.kind == "non-uniform":
            lines += [
                "",
                f"{variant.name}: heads per layer {variant.heads}; neurons per layer {variant.neurons}.",
            ]
    lines += [
        "",
        (
            "FLOPs are attention + FFN at the given sequence length (`hfprune.count`); embeddings, LayerNorms, "
            "activations and the pooler are not counted. Speedup = median over rounds of dense ms / variant ms in the "
            "same round (paired). Efficiency = speedup / FLOPs ratio."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_outputs(text: str, rows: list[dict], variants: list[Variant], args, header: list[str]) -> None:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_surgery.md").write_text(text)
    raw = {
        "header": header,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "variants": [{k: v for k, v in asdict(variant).items() if k != "model"} for variant in variants],
    }
    (args.out_dir / "bench_surgery.json").write_text(json.dumps(raw, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda was asked for, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    variants = build_variants(args)
    time_variants(variants, args)
    rows = result_rows(variants, args)

    elapsed = time.perf_counter() - started
    command = shlex.join(["python", "-m", f"scripts.benchmarks.{Path(__file__).stem}",
                          *(sys.argv[1:] if argv is None else argv)])
    header = [
        "# hfprune surgery benchmark: BERT-base (random init)",
        "",
        f"- Machine: {machine_line(args)}",
        f"- Command: `{command}`",
        (
            f"- Settings: device {args.device}, {args.dtype}, seq {args.seq_len}, batch sizes {args.batch_sizes}, "
            f"{args.warmup} warm-up + {args.repeats} timed passes per variant and batch (round-robin), "
            f"seed {args.seed}; finished in {elapsed:.0f} s"
        ),
        f"- Load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}",
    ]
    text = markdown(rows, variants, args, header)
    print(text)
    write_outputs(text, rows, variants, args, header)
    print(
        f"wrote {args.out_dir / 'bench_surgery.md'} and {args.out_dir / 'bench_surgery.json'}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
