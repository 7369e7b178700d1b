"""Command line.

`hfprune prune --model DIR_OR_ID --recipe R --data D --out O [--block-by-block] [--push-to-hub ID]` loads the
model (a plain transformers checkpoint or an hfprune one), builds calibration batches from D with the model's own
tokenizer (or, for a speech model, its feature extractor: D is then a directory of audio files or a dataset with
an audio column), prunes per the recipe (with `--block-by-block`, one transformer block in memory at a time:
`hfprune.prune_checkpoint`), and saves a reloadable model, its tokenizer / feature extractor, the report
(`pruning_report.txt`) and a model card (`README.md` + `pruning.png`); with `--push-to-hub` that directory is then
uploaded in one commit.

`hfprune report DIR_OR_ID [--compare DENSE] [--plot PNG] [--seq-len N]` prints params, FLOPs and what each layer
kept for any pruned checkpoint, and with `--compare` the measured CPU latency of both models side by side.

`hfprune export-gguf DIR OUT.gguf [--dtype f32|f16|q8_0] [--tokenizer PATH]` writes a Llama/Mistral/Qwen2
checkpoint, pruned or not, to a GGUF file that llama.cpp runs, per-layer shapes included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import CheckpointError, HfpruneError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfprune", description="Structured pruning for transformers models.")
    commands = parser.add_subparsers(dest="command", required=True)
    prune = commands.add_parser("prune", help="prune a model to a budget, one-shot, and save it")
    prune.add_argument("--model", required=True, help="local directory or Hub id of the model to prune")
    prune.add_argument("--recipe", required=True, help="YAML or JSON recipe (see recipes/)")
    prune.add_argument(
        "--data",
        help="calibration data: CSV/JSON/text file, saved datasets dir, or Hub dataset; for speech models (wav2vec2, "
        "HuBERT, WavLM, Whisper) also a directory of .wav/.flac/.ogg files, and datasets need an audio column (file "
        "paths or a datasets Audio feature), featurized with the model's own feature extractor",
    )
    prune.add_argument("--out", required=True, help="directory for the pruned model")
    prune.add_argument("--split", help="dataset split to use (default: train, or the first one)")
    prune.add_argument("--text-column", help="column holding the text (default: text/sentence/...)")
    prune.add_argument("--audio-column", help="speech models: column holding the audio (default: audio/path/file/...)")
    prune.add_argument("--label-column", help="column holding integer or string labels (default: label); speech "
                       "models take labels only for audio classification")
    prune.add_argument("--batch-size", type=int, default=16, help="calibration batch size")
    prune.add_argument("--max-length", type=int, default=128, help="truncate calibration texts to this many tokens")
    prune.add_argument("--max-duration", type=float, default=30.0, help="cut calibration audio to this many seconds")
    prune.add_argument("--block-by-block", action="store_true", help="read, prune and write one transformer block "
                       "at a time, for a model larger than memory (Llama, Mistral, Qwen2; see "
                       "hfprune.prune_checkpoint for the recipes it takes)")
    prune.add_argument("--push-to-hub", metavar="ID", help="then upload the output directory to this Hub repo")
    prune.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")

    report = commands.add_parser("report", help="params, FLOPs and kept heads/neurons per layer of a checkpoint")
    report.add_argument("checkpoint", metavar="DIR_OR_ID", help="pruned checkpoint: local directory or Hub id")
    report.add_argument("--compare", metavar="DENSE", help="dense checkpoint to measure against (adds CPU latency)")
    report.add_argument("--plot", metavar="PNG", help="write a plot of the kept fraction per layer")
    report.add_argument("--seq-len", type=int, help="sequence length for FLOPs and latency (default: the one "
                        "recorded at pruning time, else 128)")
    report.add_argument("--runs", type=int, default=5, help="timed forward passes per model with --compare")

    export = commands.add_parser("export-gguf", help="write a Llama/Mistral/Qwen2 checkpoint to GGUF for llama.cpp")
    export.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (pruned or not)")
    export.add_argument("out", metavar="OUT.gguf", help="GGUF file to write (its folder must exist)")
    export.add_argument("--dtype", choices=("f32", "f16", "q8_0"), default="f32", help="matrix type (default f32)")
    export.add_argument("--tokenizer", metavar="PATH", help="a .gguf file to copy the tokenizer from, or a directory "
                        "with tokenizer.json (default: DIR)")
    return parser


def prune_command(args: argparse.Namespace) -> None:
    from .checkpoint import from_pretrained, save_pretrained
    from .publish.card import write_card
    from .publish.summary import summarize
    from .recipe import Recipe
    from .structured.prune import prune

    recipe = Recipe.load(args.recipe)  # before anything heavy: a bad recipe fails in a second
    if args.push_to_hub:
        from .publish.hub import check_repo_id, resolve_token

        check_repo_id(args.push_to_hub)  # a bad id or no token: say so now, not after pruning
        resolve_token(None)
    out = Path(args.out)
    if args.block_by_block:
        from .checkpoint import local_directory
        from .structured.offload import prune_checkpoint

        directory = local_directory(args.model, None, None)
        # Shapes only, no weight read: what building the calibration batches needs to know of the model.
        model = from_pretrained(directory, device="meta")
        batches, preprocessors = _calibration(args, model, recipe) if args.data else (None, [])
        report = prune_checkpoint(directory, recipe, calibration=batches, save_directory=out)
        model = from_pretrained(out, device="meta")  # the model card counts shapes
        print(report)
    else:
        model = from_pretrained(args.model)
        batches, preprocessors = _calibration(args, model, recipe) if args.data else (None, [])
        report = prune(model, recipe, calibration=batches)
        print(report)
        save_pretrained(model, out)
    for preprocessor in preprocessors:
        preprocessor.save_pretrained(out)
    (out / "pruning_report.txt").write_text(str(report) + "\n")
    base_model = None if Path(args.model).is_dir() else args.model
    write_card(out, summarize(model, report=report, base_model=base_model), args.push_to_hub or str(out))
    print(f"saved to {out} (reload with hfprune.from_pretrained({str(out)!r}))")
    if args.push_to_hub:
        from .publish.hub import upload_folder

        url = upload_folder(out, args.push_to_hub, private=args.private or None)
        print(f"pushed to {args.push_to_hub}: {url}")


def _calibration(args: argparse.Namespace, model, recipe) -> tuple[list, list]:
    """Calibration batches from `--data`, and what made them (tokenizer, or feature extractor [+ tokenizer]), to
    save beside the pruned model. The model's input decides text or audio, not the look of the data."""
    from .calibration.audio import is_audio_model

    if is_audio_model(model):
        return _audio_calibration(args, model, recipe)
    import transformers

    from .calibration.data import load_dataset, text_batches

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    batches = text_batches(
        load_dataset(args.data, args.split),
        tokenizer,
        batch_size=args.batch_size,
        max_length=args.max_length,
        num_samples=recipe.num_samples,
        text_column=args.text_column,
        label_column=args.label_column,
        label2id=getattr(model.config, "label2id", None),
    )
    return batches, [tokenizer]


def _audio_calibration(args: argparse.Namespace, model, recipe) -> tuple[list, list]:
    from .calibration.audio import audio_batches, audio_clips, load_feature_extractor, takes_class_labels

    feature_extractor = load_feature_extractor(args.model)  # first: a missing one fails before any audio is read
    labelled = takes_class_labels(model)
    clips = audio_clips(args.data, args.split, args.audio_column, args.label_column, labelled=labelled)
    batches = audio_batches(
        clips,
        feature_extractor,
        model.main_input_name,
        batch_size=args.batch_size,
        num_samples=recipe.num_samples,
        max_duration=args.max_duration,
        label2id=getattr(model.config, "label2id", None),
    )
    return batches, [feature_extractor, *_optional_tokenizer(args.model)]


def _optional_tokenizer(model_path: str) -> list:
    """The tokenizer saved with a speech model (CTC, Whisper: what decodes its output), if it has one; classifiers
    have none, and calibration does not need it. Only files on disk count: without them `AutoTokenizer` builds an
    empty Whisper tokenizer from the config alone, which must not be saved as if it were the model's."""
    import transformers

    from .checkpoint import local_directory

    directory = local_directory(model_path, None, None)
    if not any((directory / name).exists() for name in ("tokenizer_config.json", "tokenizer.json")):
        return []
    return [transformers.AutoTokenizer.from_pretrained(directory)]


def _checkpoint(path_or_id: str) -> Path:
    """The local directory of a pruned checkpoint, or a CheckpointError saying what is missing."""
    from .checkpoint import PRUNING_CONFIG, local_directory

    directory = local_directory(path_or_id, None, None)
    if not (directory / "config.json").exists():
        raise CheckpointError(
            f"{path_or_id} is not a checkpoint: it has no config.json (expected a directory written by "
            "save_pretrained or hfprune.save_pretrained)"
        )
    if not (directory / PRUNING_CONFIG).exists():
        raise CheckpointError(
            f"{path_or_id} is not a pruned checkpoint: it has config.json but no {PRUNING_CONFIG}. Prune it with "
            "`hfprune prune`, or save a pruned model with hfprune.save_pretrained"
        )
    return directory


def report_command(args: argparse.Namespace) -> None:
    from .calibration.lengths import decoder_length, input_length
    from .checkpoint import from_pretrained
    from .cost.latency import dummy_inputs, measure_latency
    from .publish.console import print_summary
    from .publish.summary import summarize

    directory = _checkpoint(args.checkpoint)
    notes = []
    if args.compare:
        model, dense = from_pretrained(directory), from_pretrained(args.compare)
        summary = summarize(model, dense=dense, seq_len=args.seq_len)
        # Both models see the same inputs, built for the dense one (the pruned one accepts whatever it does).
        inputs = dummy_inputs(dense, seq_len=summary.seq_len)
        seconds = measure_latency({"dense": dense, "pruned": model}, inputs, runs=args.runs)
        before, after = seconds["dense"] * 1e3, seconds["pruned"] * 1e3
        summary.metrics = {"before": {"CPU latency (ms)": before}, "after": {"CPU latency (ms)": after}}
        timed = summary.lengths
        if dense.config.is_encoder_decoder:  # Whisper's encoder always takes its whole 30 s window
            timed = f"{input_length(dense, inputs)} encoder frames, {decoder_length(inputs)} decoder tokens"
        notes.append(
            f"FLOPs kept {summary.flops[1] / summary.flops[0]:.1%}, params kept "
            f"{summary.params[1] / summary.params[0]:.1%}, latency {after / before:.1%} of dense "
            f"({before / after:.2f}x faster; median of {args.runs} runs, batch 1, {timed})"
        )
    else:
        # Counting needs shapes only: build the pruned model on the meta device, without reading the weights.
        summary = summarize(from_pretrained(directory, device="meta"), seq_len=args.seq_len)
    print_summary(summary, notes=notes)
    if args.plot:
        from .publish.plot import plot_kept

        print(f"plot written to {plot_kept(summary, args.plot)}")


def export_command(args: argparse.Namespace) -> None:
    from .checkpoint import export_gguf

    path = export_gguf(args.checkpoint, args.out, dtype=args.dtype, tokenizer=args.tokenizer)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.dtype})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prune":
            prune_command(args)
        elif args.command == "report":
            report_command(args)
        elif args.command == "export-gguf":
            export_command(args)
    except HfpruneError as error:
        print(f"hfprune: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
