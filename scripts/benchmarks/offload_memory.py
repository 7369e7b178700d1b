"""Benchmark: one-shot pruning of a model larger than the memory its process may use, one block at a time.

Builds a randomly initialised Llama (no download; by default hidden 1024, 24 layers, FFN 4096, 16 heads over 4
KV heads, vocabulary 16384, untied head: 403M parameters, 1.61 GB in float32), saves it as a sharded safetensors
checkpoint, then prunes it in fresh processes, one run each:

- `whole`: `hfprune.from_pretrained`, `hfprune.prune`, `hfprune.save_pretrained`; no limit;
- `blocks`: `hfprune.prune_checkpoint` (one block in memory at a time) under the memory limit;
- `whole` under the same limit, once: it must fail, which shows the limit is below what the model needs.

Recipes: Wanda at 50 % unstructured, and heads + neurons by activation scores to 70 % of the parameters
(`reconstruct`/`tune` off, which block by block needs); calibration: random token ids (seeded).

The limit is `resource.setrlimit(RLIMIT_DATA, ...)`, set in the child process: since Linux 4.7 it caps the
process's private writable memory (heap and anonymous mappings: every tensor torch allocates on the CPU), and
allocations past it fail (torch raises "DefaultCPUAllocator: can't allocate memory"). It counts what importing
torch and transformers takes (~0.4 GB) too. The children run with glibc's mmap threshold fixed at 64 KB
(`MALLOC_MMAP_THRESHOLD_`), so that memory freed is given back and the limit counts what the process holds (see
`CHILD_ENVIRONMENT`). RLIMIT_AS does not work with torch (its libraries reserve far more
address space than they use), and RLIMIT_RSS is not enforced by Linux. Peak memory is measured as VmHWM (peak
resident set) from /proc/self/status at the end of the run, minus VmRSS after imports and after the calibration
batches are built.

The block-by-block checkpoint is checked against the whole model's: same config.json and kept units
(pruning_config.json), every tensor equal (read one at a time, max |difference| reported).

Writes a markdown table to stdout and `bench_out/offload_memory.md`, raw numbers to `bench_out/offload_memory.json`
(or `--json`). Run from the repository root (`make bench-offload`):

    python -m scripts.benchmarks.offload_memory                         # 1.6 GB model, limit 1 GB
    python -m scripts.benchmarks.offload_memory --layers 12 --limit-mb 800
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

# glibc maps every allocation over 64 KB on its own and unmaps it when freed. By default its mmap threshold adapts
# upwards and freed tensors stay in its heap as address space that RLIMIT_DATA counts though no page of it is
# touched (building a 1.6 GB model on the meta device, whose parameters transformers allocates and drops one by
# one, left 1.2 GB of it): the limit would then measure the allocator's habits, not what the process holds.
CHILD_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
RECIPES = {
    "wanda": {"structures": ["weights"], "weights": {"criterion": "wanda", "sparsity": 0.5}},
    "activation": {"target": {"params": 0.7}, "criterion": "activation", "reconstruct": False, "tune": False},
}


def memory_status() -> dict[str, int]:
    """VmRSS, VmHWM and VmData of this process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM", "VmData")}


def calibration(args, vocab: int) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.samples, args.seq_len), generator=generator)
    return [{"input_ids": ids[i : i + args.batch_size], "attention_mask": torch.ones_like(ids[i : i + args.batch_size])}
            for i in range(0, args.samples, args.batch_size)]


def child(args) -> int:
    """One pruning run in this (fresh) process; writes its measurements to `args.json`."""
    if args.limit_mb:
        limit = args.limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    import torch
    import transformers

    import hfprune

    torch.manual_seed(0)
    transformers.LlamaForCausalLM  # noqa: B018  (transformers imports a model's module on first use: before the baseline)
    config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    batches = calibration(args, config["vocab_size"])
    baseline = memory_status()
    start = time.perf_counter()
    result = {"mode": args.child, "recipe": args.recipe, "limit_mb": args.limit_mb, "baseline": baseline}
    try:
        if args.child == "blocks":
            hfprune.prune_checkpoint(args.checkpoint, RECIPES[args.recipe], batches, save_directory=args.out)
        else:
            model = hfprune.from_pretrained(args.checkpoint)
            hfprune.prune(model, RECIPES[args.recipe], calibration=batches)
            hfprune.save_pretrained(model, args.out)
        result["ok"] = True
    except (MemoryError, RuntimeError, OSError, hfprune.HfpruneError) as error:  # an allocation past the limit
        # fails in torch's allocator (RuntimeError), in Python (MemoryError), or mapping a shard, which
        # hfprune.from_pretrained reports as a CheckpointError
        result.update(ok=False, error=str(error).strip().splitlines()[0])
    status = memory_status()
    result.update(seconds=time.perf_counter() - start, peak=status["VmHWM"],
                  peak_growth_bytes=status["VmHWM"] - baseline["VmRSS"])
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def build_checkpoint(args, directory: Path) -> dict:
    """A random Llama of the requested shape saved to `directory` (skipped when already there); its sizes."""
    import torch
    import transformers

    heads = args.hidden // 64
    config = transformers.LlamaConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=4 * args.hidden,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), vocab_size=args.vocab,
        max_position_embeddings=max(2048, args.seq_len), tie_word_embeddings=False,
    )
    if not (directory / "config.json").exists():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        model.save_pretrained(directory, max_shard_size="500MB")
        del model
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    size = lambda module: sum(p.numel() * p.element_size() for p in module.parameters())  # noqa: E731
    return {"model_bytes": size(model), "block_bytes": size(model.model.layers[0]),
            "params": sum(p.numel() for p in model.parameters()), "config": config.to_diff_dict()}


def run_child(args, mode: str, recipe: str, checkpoint: Path, out: Path, limit_mb: int) -> dict:
    record = args.out / f"{mode}-{recipe}-{limit_mb}.json"
    command = [sys.executable, "-m", "scripts.benchmarks.offload_memory", "--child", mode, "--recipe", recipe,
               "--checkpoint", str(checkpoint), "--out", str(out), "--limit-mb", str(limit_mb), "--json", str(record),
               "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
    print(f"$ {shlex.join(command)}", file=sys.stderr, flush=True)
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **CHILD_ENVIRONMENT})
    if completed.returncode != 0 or not record.exists():
        raise SystemExit(f"the {mode} run failed:\n{completed.stdout}\n{completed.stderr}")
    return json.loads(record.read_text())


def weight_map(directory: Path) -> dict[str, str]:
    """Tensor name -> the file holding it, for a one-file or sharded checkpoint."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    with safe_open(str(directory / "model.safetensors"), framework="pt") as reader:
        return dict.fromkeys(reader.keys(), "model.safetensors")


def compare(expected: Path, found: Path) -> dict:
    """Whether two checkpoints hold the same model: config, kept units, every tensor (max |difference|)."""
    from safetensors import safe_open

    same_config = json.loads((expected / "config.json").read_text()) == json.loads((found / "config.json").read_text())
    sites = [json.loads((d / "pruning_config.json").read_text())["sites"] for d in (expected, found)]
    maps = [weight_map(d) for d in (expected, found)]
    difference = 0.0
    same_keys = maps[0].keys() == maps[1].keys()
    if same_keys:
        for name in maps[0]:
            tensors = []
            for directory, files in zip((expected, found), maps, strict=True):
                with safe_open(str(directory / files[name]), framework="pt") as reader:
                    tensors.append(reader.get_tensor(name))
            if tensors[0].shape != tensors[1].shape:
                same_keys = False
                break
            difference = max(difference, float((tensors[0].float() - tensors[1].float()).abs().max()))
            del tensors
    return {"same_config": same_config, "same_units": sites[0] == sites[1], "same_tensors": same_keys,
            "max_abs_difference": difference if same_keys else None}


def table(measured: dict) -> str:
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    mb = lambda b: f"{b / 1e6:.0f} MB"  # noqa: E731
    lines = [f"Llama, {measured['params'] / 1e6:.0f}M parameters: {gb(measured['model_bytes'])} float32 "
             f"(one block {mb(measured['block_bytes'])}); calibration {measured['samples']} x {measured['seq_len']} "
             f"tokens; limit: RLIMIT_DATA {measured['limit_mb']} MB for the whole process.", "",
             "| recipe | run | limit | peak RSS growth | peak RSS | time | result |", "|---|---|---|---|---|---|---|"]
    for run in measured["runs"]:
        limit = f"{run['limit_mb']} MB" if run["limit_mb"] else "none"
        outcome = "ok" if run["ok"] else f"failed: ...{run['error'][-90:]}"  # the cause ends the message
        lines.append(f"| {run['recipe']} | {run['mode']} | {limit} | {mb(run['peak_growth_bytes'])} | "
                     f"{mb(run['peak'])} | {run['seconds']:.0f} s | {outcome} |")
    for recipe, check in measured.get("equal", {}).items():
        lines.append("")
        lines.append(f"{recipe}: block by block = whole model: config {check['same_config']}, kept units "
                     f"{check['same_units']}, tensors {check['same_tensors']} (max |difference| "
                     f"{check['max_abs_difference']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/offload"), help="working directory")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--samples", type=int, default=8, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit-mb", type=int, default=1024, help="RLIMIT_DATA of the limited runs (0: none)")
    parser.add_argument("--modes", default="whole,blocks", help="comma-separated: whole, blocks")
    parser.add_argument("--recipes", default="wanda,activation", help=f"comma-separated: {', '.join(RECIPES)}")
    parser.add_argument("--json", type=Path, help="where the raw numbers go (default: bench_out/offload_memory.json)")
    parser.add_argument("--child", choices=("whole", "blocks"), help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "dense"
    measured = {**build_checkpoint(args, checkpoint), "samples": args.samples, "seq_len": args.seq_len,
                "limit_mb": args.limit_mb, "runs": [], "equal": {}}
    modes = args.modes.split(",")
    for recipe in args.recipes.split(","):
        if "whole" in modes:
            measured["runs"].append(run_child(args, "whole", recipe, checkpoint, args.out / f"{recipe}-whole", 0))
        if "blocks" in modes:
            run = run_child(args, "blocks", recipe, checkpoint, args.out / f"{recipe}-blocks", args.limit_mb)
            measured["runs"].append(run)
            if not run["ok"]:
                raise SystemExit(f"block-by-block pruning failed: {run['error']}")
        if modes == ["whole", "blocks"]:
            measured["equal"][recipe] = compare(args.out / f"{recipe}-whole", args.out / f"{recipe}-blocks")
    if "whole" in modes and args.limit_mb:
        # The limit is below what the model needs: the whole-model path cannot even load it under it.
        recipe = args.recipes.split(",")[0]
        measured["runs"].append(run_child(args, "whole", recipe, checkpoint, args.out / "whole-limited",
                                          args.limit_mb))
    text = table(measured)
    print(text)
    (args.json or Path("bench_out/offload_memory.json")).parent.mkdir(parents=True, exist_ok=True)
    (args.json or Path("bench_out/offload_memory.json")).write_text(json.dumps(measured, indent=1))
    if args.json is None:
        Path("bench_out/offload_memory.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
