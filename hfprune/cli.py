"""Command line: `hfprune prune --model DIR_OR_ID --recipe R --data D --out O`.

Loads the model (a plain transformers checkpoint or an hfprune one), builds calibration batches from D with
the model's own tokenizer, prunes per the recipe, and saves a reloadable model, its tokenizer, and the report
(`pruning_report.txt`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import HfpruneError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfprune", description="Structured pruning for transformers models.")
    commands = parser.add_subparsers(dest="command", required=True)
    prune = commands.add_parser("prune", help="prune a model to a budget, one-shot, and save it")
    prune.add_argument("--model", required=True, help="local directory or Hub id of the model to prune")
    prune.add_argument("--recipe", required=True, help="YAML or JSON recipe (see recipes/)")
    prune.add_argument("--data", help="calibration data: CSV/JSON/text file, saved datasets dir, or Hub dataset")
    prune.add_argument("--out", required=True, help="directory for the pruned model")
    prune.add_argument("--split", help="dataset split to use (default: train, or the first one)")
    prune.add_argument("--text-column", help="column holding the text (default: text/sentence/...)")
    prune.add_argument("--label-column", help="column holding integer or string labels (default: label)")
    prune.add_argument("--batch-size", type=int, default=16, help="calibration batch size")
    prune.add_argument("--max-length", type=int, default=128, help="truncate calibration texts to this many tokens")
    return parser


def prune_command(args: argparse.Namespace) -> None:
    import transformers

    from .data import load_dataset, text_batches
    from .io import from_pretrained, save_pretrained
    from .prune import prune
    from .recipe import Recipe

    recipe = Recipe.load(args.recipe)  # before anything heavy: a bad recipe fails in a second
    model = from_pretrained(args.model)
    batches = None
    tokenizer = None
    if args.data:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        dataset = load_dataset(args.data, args.split)
        batches = text_batches(
            dataset,
            tokenizer,
            batch_size=args.batch_size,
            max_length=args.max_length,
            num_samples=recipe.num_samples,
            text_column=args.text_column,
            label_column=args.label_column,
            label2id=getattr(model.config, "label2id", None),
        )
    report = prune(model, recipe, calibration=batches)
    print(report)
    out = Path(args.out)
    save_pretrained(model, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "pruning_report.txt").write_text(str(report) + "\n")
    print(f"saved to {out} (reload with hfprune.from_pretrained({str(out)!r}))")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prune":
            prune_command(args)
    except HfpruneError as error:
        print(f"hfprune: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
