"""Whisper's sensitivity map: WER after removing a share of one structure alone, one-shot, no training.

For Whisper tiny.en (`bench_speech.load_dense`) on the espeak-ng set (`speech_eval_set.py`), each structure in
`GROUPS` (encoder heads, encoder FFN, decoder self-attention heads, cross-attention heads, decoder FFN, decoder
layers, encoder layers) loses `--shares` of its units while everything else stays whole: `hfprune.prune` with
`sites` limited to that structure, Fisher scores against the dense model's own transcripts of `--num-samples`
unlabelled train clips (transcribed once, shared by every run), and kept counts as the target. Heads and
neurons are pruned with `plain` (no rearrangement, tuning or reconstruction) and `reconstruct` (ridge refit of
the output projections, the library's default elsewhere), and with `tune` (mask tuning) on request; layers are
removed by block importance (ShortGPT) and have no refinement.

It tells which structures one-shot pruning may touch, and which need training. Writes
`whisper_sensitivity.{md,json,png}`; finished runs are kept in `whisper_sensitivity.partial.json`.

    python -m scripts.benchmarks.whisper_sensitivity [--shares 0.25] [--modes plain,reconstruct]   # 15 min
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import transformers

import hfprune
from scripts.benchmarks.bench_speech import ENCODER_FRAMES, features_of, label_ids, load_dense, transcribe
from scripts.benchmarks.report import run_header, write_report
from scripts.benchmarks.speech_eval_set import speech_eval_set, wer

# structure -> (what `structures` removes, the `sites` pattern that limits it)
GROUPS = {
    "encoder heads": ("heads", "encoder.*.attention"),
    "encoder FFN": ("neurons", "encoder.*.ffn"),
    "decoder self-attention heads": ("heads", "decoder.*.attention"),
    "cross-attention heads": ("heads", "decoder.*.cross_attention"),
    "decoder FFN": ("neurons", "decoder.*.ffn"),
    "decoder layers": ("layers", "decoder"),
    "encoder layers": ("layers", "encoder"),
}
MODES = {
    "plain": {"rearrange": False, "tune": False, "reconstruct": False},
    "tune": {"rearrange": False, "tune": True, "reconstruct": False},
    "reconstruct": {"rearrange": False, "tune": False, "reconstruct": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"subset of {list(GROUPS)}")
    parser.add_argument("--shares", default="0.25", help="shares of each structure's units removed")
    parser.add_argument("--modes", default="plain,reconstruct", help=f"subset of {list(MODES)} (heads and neurons)")
    parser.add_argument("--num-samples", type=int, default=64, help="unlabelled calibration clips")
    parser.add_argument("--test-clips", type=int, default=48,
                        help="evaluate on N test clips spread evenly over voices, speeds and sentences (0: all 96)")
    parser.add_argument("--model-dir", default="out/whisper-tiny.en")
    parser.add_argument("--cache-dir", default="out/speech_eval_set")
    parser.add_argument("--out-dir", default="bench_out")
    return parser.parse_args(argv)


def recipe_for(model, group: str, share: float, mode: str, lengths: dict) -> hfprune.Recipe:
    """A recipe that removes `share` of `group`'s units and nothing else."""
    structure, pattern = GROUPS[group]
    base = hfprune.Recipe(structures=[structure], sites=[pattern], criterion="fisher", min_heads=1, round_neurons=8,
                          **lengths, **MODES[mode])
    counts = hfprune.count(model, seq_len=lengths["seq_len"], encoder_seq_len=lengths["encoder_seq_len"])
    chosen = {n: s for n, s in counts.sites.items() if base.selects(n)}
    if structure == "layers":
        # Layers of one stack cost the same: a FLOPs target just above "without k layers" removes exactly k.
        layers = {n.rsplit(".", 1)[0] for n in chosen}
        removed = round(share * len(layers))
        per_layer = sum(s.flops for s in chosen.values()) / len(layers)
        fraction = (counts.flops - removed * per_layer) / counts.flops + 1e-6
        base.target = {"flops": min(fraction, 1.0)}
    else:
        total = sum(s.units for s in chosen.values())
        base.target = {structure: round(total * (1 - share))}
    return base


def transcript_batches(model, processor, features: torch.Tensor, batch_size: int = 8) -> list[dict]:
    """Calibration batches labelled with the dense model's own transcripts (what `hfprune.prune` derives from
    unlabelled audio itself), made once so that every run scores against the same labels."""
    batches = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        labels = [label_ids(processor, text) for text in transcribe(model, processor, chunk, batch_size)]
        padded = torch.full((len(labels), max(map(len, labels))), -100)
        for row, ids in zip(padded, labels, strict=True):
            row[: len(ids)] = torch.tensor(ids)
        batches.append({"input_features": chunk, "labels": padded})
    return batches


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    dense, processor = load_dense(args.model_dir)
    data = speech_eval_set(args.cache_dir)
    if args.test_clips:
        data["test"] = data["test"].select(range(0, len(data["test"]), len(data["test"]) // args.test_clips))
    test_features = features_of(processor, data["test"])
    train_features = features_of(processor, data["train"].select(range(args.num_samples)))
    references = list(data["test"]["text"])
    transformers.logging.set_verbosity_error()
    calibration = transcript_batches(dense, processor, train_features)
    scores = None  # every run prunes a copy of the same dense model, and the scores cover every site: score once
    decoder_len = round(statistics.mean(len(label_ids(processor, t)) + 1 for t in references))
    lengths = {"seq_len": decoder_len, "encoder_seq_len": ENCODER_FRAMES}
    dense_flops = hfprune.count(dense, seq_len=decoder_len, encoder_seq_len=ENCODER_FRAMES).flops
    partial = Path(args.out_dir) / "whisper_sensitivity.partial.json"
    rows = json.loads(partial.read_text()) if partial.exists() else []
    if not any(r["group"] == "dense" for r in rows):
        rows.append({"group": "dense", "share": 0.0, "mode": "-", "flops_kept": 1.0,
                     "wer": wer(transcribe(dense, processor, test_features), references)})
    print(f"dense: WER {rows[0]['wer']:.2%}", flush=True)
    for group in args.groups.split(","):
        modes = ["plain"] if GROUPS[group][0] == "layers" else args.modes.split(",")
        for share in [float(s) for s in args.shares.split(",")]:
            for mode in modes:
                if any(r["group"] == group and r["share"] == share and r["mode"] == mode for r in rows):
                    continue
                model = copy.deepcopy(dense)
                began = time.perf_counter()
                recipe = recipe_for(dense, group, share, mode, lengths)
                report = hfprune.prune(model, recipe, calibration, scores=scores)
                scores = report.scores or scores
                seconds = time.perf_counter() - began
                predictions = transcribe(model, processor, test_features)
                row = {"group": group, "share": share, "mode": mode, "wer": wer(predictions, references),
                       "flops_kept": hfprune.count(model, **lengths).flops / dense_flops, "prune_s": seconds,
                       "kept": report.summary().get("kept"), "examples": predictions[:2]}
                rows.append(row)
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(rows, indent=1))
                print(f"{group} -{share:.0%} {mode}: WER {row['wer']:.2%}, FLOPs kept {row['flops_kept']:.3f}, "
                      f"pruned in {seconds:.0f} s; {predictions[0]!r}", flush=True)
    text = "\n".join([run_header(__file__, start), "", markdown(rows, args)])
    path = write_report(args.out_dir, "whisper_sensitivity", text, rows)
    plot(rows, path.with_suffix(".png"))
    print(text)


def markdown(rows: list[dict], args) -> str:
    dense = next(r for r in rows if r["group"] == "dense")
    shares = [float(s) for s in args.shares.split(",")]
    modes = args.modes.split(",")
    columns = [(share, mode) for share in shares for mode in modes]
    lines = [f"Test WER (%) after removing a share of one structure, one-shot (dense {dense['wer']:.2%}); in "
             "brackets: FLOPs kept per utterance", "",
             "| structure | " + " | ".join(f"-{s:.0%} {m}" for s, m in columns) + " |",
             "|---|" + "--:|" * len(columns)]
    for group in args.groups.split(","):
        cells = []
        for share, mode in columns:
            if GROUPS[group][0] == "layers" and mode != "plain":
                cells.append("(no refinement)")
                continue
            found = [r for r in rows if r["group"] == group and r["share"] == share and r["mode"] == mode]
            cells.append(f"{found[0]['wer'] * 100:.1f} ({found[0]['flops_kept']:.2f})" if found else "")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in rows if r["group"] == "dense")["wer"] * 100
    groups = [g for g in GROUPS if any(r["group"] == g for r in rows)]
    columns = sorted({(r["share"], r["mode"]) for r in rows if r["group"] != "dense"})
    values = [[next((min(r["wer"] * 100, 200) for r in rows if r["group"] == g and (r["share"], r["mode"]) == c),
                    float("nan")) for c in columns] for g in groups]
    figure, axis = plt.subplots(figsize=(1.3 * len(columns) + 3, 0.5 * len(groups) + 1.8))
    image = axis.imshow([[v - dense for v in row] for row in values], cmap="Reds", vmin=0, vmax=30, aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value == value:
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(columns)), [f"-{s:.0%}\n{m}" for s, m in columns], fontsize=8)
    axis.set_yticks(range(len(groups)), groups, fontsize=8)
    axis.set_title(f"Whisper tiny.en: test WER (%) after one-shot removal (dense {dense:.1f})", fontsize=9)
    figure.colorbar(image, label="WER points above dense (clipped at 30)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
