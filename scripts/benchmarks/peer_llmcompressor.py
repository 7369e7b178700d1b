"""Peer baseline for the LLM pruning benchmark: llm-compressor's one-shot Wanda and SparseGPT.

This script prunes a Hugging Face causal LM with llm-compressor's `oneshot(...)` and a `WandaPruningModifier` or
`SparseGPTModifier`, on exactly the calibration token ids it is given, in fp32 on the CPU, and saves the pruned
model densely (zeros in place) with `save_pretrained`, so the main environment's newer transformers can load it
with a plain `AutoModelForCausalLM.from_pretrained(out)`.

llm-compressor pins its own transformers (0.14: transformers>=5.15,<=5.17), so it lives in its own virtual
environment, `out/venvs/llmcompressor`, made by `scripts/benchmarks/setup_llmcompressor_venv.sh`
(torch 2.13.0 CPU first, then `llmcompressor==0.14.*`). The script runs with THAT venv's python, from the repo
root, and never imports hfprune:

    bash scripts/benchmarks/setup_llmcompressor_venv.sh
    out/venvs/llmcompressor/bin/python -m scripts.benchmarks.peer_llmcompressor \\
        --model out/smollm2-135m --calibration out/calib64.pt --method wanda --pattern unstructured \\
        --sparsity 0.5 --out out/peer-wanda-50 --result out/peer-wanda-50.json

`--calibration` is a `torch.save`d LongTensor of input ids, shape (samples, seq_len). Every row is used, in a
`datasets.Dataset` with `input_ids` and an all-ones `attention_mask`, unshuffled, with
`num_calibration_samples = samples` and `max_seq_length = seq_len`, batch size 1.

The modifier is built with llm-compressor 0.14's argument names: `sparsity`, `mask_structure` ("2:4", or "0:0"
for unstructured), `targets=["Linear"]` (in llm-compressor every matched Linear is a "layer" whose Linear
children are pruned: on a decoder-only LM that is each decoder layer's q/k/v/o and gate/up/down projections) and
`ignore=["re:.*lm_head"]`. SparseGPT keeps its defaults (`block_size=128`, `dampening_frac=0.01`). The pipeline is
llm-compressor's default ("independent", which picks its sequential, layer-by-layer pipeline for these modifiers).

The result JSON holds method, pattern, sparsity, the wall time of the `oneshot` call alone (`time.perf_counter`;
model loading and saving excluded), the process's peak RSS in GiB (`resource.getrusage(RUSAGE_SELF).ru_maxrss`,
which Linux reports in KiB, so this includes loading the model), the llmcompressor / compressed-tensors /
transformers / torch versions, and the measured fraction of zeros in the targeted linears (all `nn.Linear` in the
model except `lm_head`), overall and per projection name, plus for N:M patterns the share of N:M groups (along
the input dimension) that hold at least N zeros.

From the main environment (no llmcompressor needed there), `run_peer(model_dir, calibration_ids, method,
pattern, sparsity, out_dir)` runs this script in a subprocess with the peer venv's python and returns the result
JSON as a dict.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV_PYTHON = REPO_ROOT / "out" / "venvs" / "llmcompressor" / "bin" / "python"
SETUP_SCRIPT = "scripts/benchmarks/setup_llmcompressor_venv.sh"
METHODS = ("wanda", "sparsegpt")
PATTERNS = {"unstructured": "0:0", "2:4": "2:4"}
TARGETS = ["Linear"]
IGNORE = ["re:.*lm_head"]


def _targeted_linears(model) -> dict:
    """The linears the modifiers prune: every `nn.Linear` but `lm_head`, by qualified name."""
    import torch.nn as nn

    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not name.split(".")[-1] == "lm_head"}


def zero_stats(model, mask_structure: str = "0:0") -> dict:
    """Fraction of exactly-zero weights in the targeted linears: overall and per projection name (q_proj, ...).

    For an N:M `mask_structure` also the share of M-groups (consecutive input columns of a row) holding at least
    N zeros (1.0 when every group obeys the pattern). Works in either environment (torch only).
    """
    import torch

    zeros = total = 0
    by_kind: dict[str, list[int]] = {}
    n, m = (int(x) for x in mask_structure.split(":"))
    groups_ok = groups = 0
    with torch.no_grad():
        for name, lin in _targeted_linears(model).items():
            w = lin.weight
            z = int((w == 0).sum())
            zeros += z
            total += w.numel()
            kind = by_kind.setdefault(name.split(".")[-1], [0, 0])
            kind[0] += z
            kind[1] += w.numel()
            if m and w.shape[1] % m == 0:
                g = (w.reshape(w.shape[0], -1, m) == 0).sum(-1)
                groups_ok += int((g >= n).sum())
                groups += g.numel()
    out = {
        "zero_fraction": zeros / total if total else 0.0,
        "targeted_params": total,
        "targeted_linears": len(_targeted_linears(model)),
        "zero_fraction_by_kind": {k: v[0] / v[1] for k, v in sorted(by_kind.items())},
    }
    if m:
        out["nm_groups_ok"] = groups_ok / groups if groups else 0.0
    return out


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux -> GiB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="transformers causal-LM checkpoint folder")
    parser.add_argument("--calibration", required=True, help="torch-saved LongTensor of input ids (samples, seq_len)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--pattern", required=True, choices=tuple(PATTERNS))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", required=True, help="folder for the pruned model (dense, zeros in place)")
    parser.add_argument("--result", required=True, help="JSON file for the measurements")
    args = parser.parse_args(argv)

    # llm-compressor and its transformers are only in the peer venv: import them here, not at module level.
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.load(args.calibration)
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point()):
        raise SystemExit(f"--calibration must hold an integer tensor of shape (samples, seq_len); got "
                         f"{getattr(ids, 'shape', type(ids))}")
    ids = ids.long()
    samples, seq_len = ids.shape
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})

    mask_structure = PATTERNS[args.pattern]
    modifier_cls = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    modifier = modifier_cls(sparsity=args.sparsity, mask_structure=mask_structure, targets=TARGETS, ignore=IGNORE)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except Exception as err:  # a checkpoint without a tokenizer still prunes; nothing to copy then
        print(f"peer_llmcompressor: no tokenizer in {args.model} ({err}); saving the model only", file=sys.stderr)

    start = time.perf_counter()
    model = oneshot(
        model=model,
        tokenizer=tokenizer,
        recipe=modifier,
        dataset=dataset,
        num_calibration_samples=samples,
        max_seq_length=seq_len,
        shuffle_calibration_samples=False,
        batch_size=1,
        output_dir=None,  # saved below, densely, outside the timed call
    )
    wall_s = time.perf_counter() - start

    stats = zero_stats(model, mask_structure)
    os.makedirs(args.out, exist_ok=True)
    # Dense: compressed-tensors' sparse formats need compressed-tensors to load; zeros in place load anywhere.
    model.save_pretrained(args.out, save_compressed=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)

    result = {
        "peer": "llmcompressor",
        "method": args.method,
        "pattern": args.pattern,
        "mask_structure": mask_structure,
        "sparsity": args.sparsity,
        "model": str(args.model),
        "calibration": str(args.calibration),
        "calibration_samples": samples,
        "seq_len": seq_len,
        "targets": TARGETS,
        "ignore": IGNORE,
        "dtype": "float32",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall_s,
        "peak_rss_gb": _peak_rss_gb(),
        **stats,
        "out": str(args.out),
        "versions": {
            "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("method", "pattern", "sparsity", "wall_s", "peak_rss_gb",
                                             "zero_fraction")}))
    return result


def _pump(stream, sink, tail: collections.deque | None) -> None:
    for line in iter(stream.readline, ""):
        sink.write(line)
        sink.flush()
        if tail is not None:
            tail.append(line)
    stream.close()


def run_peer(model_dir, calibration_ids, method: str, pattern: str, sparsity: float, out_dir,
             python=DEFAULT_VENV_PYTHON) -> dict:
    """Prune `model_dir` with llm-compressor in the peer venv and return the result JSON as a dict.

    `calibration_ids` is a (samples, seq_len) integer tensor of input ids; it is saved to a temporary .pt and the
    script runs as `python -m scripts.benchmarks.peer_llmcompressor ...` with cwd = the repo root, its stdout and
    stderr streamed to this process's. The pruned model is saved densely in `out_dir`. Raises RuntimeError when the
    peer venv is missing (naming the setup script) or the run fails (with the tail of its stderr).
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {tuple(PATTERNS)}, not {pattern!r}")
    python = Path(python)
    if not python.exists():
        raise RuntimeError(f"the llm-compressor peer venv is missing ({python} does not exist); create it with "
                           f"`bash {SETUP_SCRIPT}` from the repo root")
    with tempfile.TemporaryDirectory(prefix="peer_llmcompressor_") as tmp:
        calibration = Path(tmp) / "calibration.pt"
        result_path = Path(tmp) / "result.json"
        torch.save(torch.as_tensor(calibration_ids).long().cpu().contiguous(), calibration)
        cmd = [str(python), "-m", "scripts.benchmarks.peer_llmcompressor",
               "--model", str(Path(model_dir).resolve()), "--calibration", str(calibration),
               "--method", method, "--pattern", pattern, "--sparsity", repr(float(sparsity)),
               "--out", str(Path(out_dir).resolve()), "--result", str(result_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # the peer venv must not see the main venv's packages
        tail: collections.deque = collections.deque(maxlen=40)
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", bufsize=1)
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, None), daemon=True),
                 threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail), daemon=True)]
        for t in pumps:
            t.start()
        rc = proc.wait()
        for t in pumps:
            t.join()
        if rc != 0 or not result_path.exists():
            raise RuntimeError(f"llm-compressor peer ({method}, {pattern}, {sparsity}) failed with exit code {rc}; "
                               f"last stderr lines:\n{''.join(tail)}")
        return json.loads(result_path.read_text())


if __name__ == "__main__":
    main()
