"""Fine-tune a text classifier and prune it while training, driven by an hfprune recipe.

The pruning options (budget, criterion, schedule, distillation) come from the recipe, not from flags:

    python scripts/examples/run_text_classification.py --model out/minilm-fortunes \\
        --train_file train.csv --validation_file val.csv --recipe recipes/bert-gradual-fisher.yaml \\
        --output_dir out/pruned --num_train_epochs 2
    torchrun --nproc_per_node 2 scripts/examples/run_text_classification.py ...
    accelerate launch --multi_gpu --num_processes 2 scripts/examples/run_text_classification.py ...   # also on CPU

Data: CSV/JSON/text files or a saved `datasets` directory (see `hfprune.load_dataset`), with a text column and an
integer or string label column. The pruned model is saved (reloadable with `hfprune.from_pretrained`) with its
tokenizer; `--push_to_hub` pushes it with the Trainer.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import transformers

import hfprune


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="local directory or Hub id of the model to fine-tune")
    parser.add_argument("--recipe", required=True, help="hfprune recipe (YAML/JSON) with a schedule")
    parser.add_argument("--train_file", required=True, help="training data (file or saved datasets dir)")
    parser.add_argument("--validation_file", help="evaluation data (file or saved datasets dir)")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id")
    return parser.parse_args(argv)


def prepare(split, tokenizer, args, label2id):
    def encode(rows):
        encoded = tokenizer(rows[args.text_column], truncation=True, max_length=args.max_length)
        labels = rows[args.label_column]
        encoded["labels"] = [label2id[v] if isinstance(v, str) else int(v) for v in labels]
        return encoded

    return split.map(encode, batched=True, remove_columns=split.column_names)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def main(argv=None) -> None:
    args = parse_args(argv)
    recipe = hfprune.Recipe.load(args.recipe)  # a bad recipe fails before anything is loaded
    transformers.set_seed(args.seed)
    train = hfprune.load_dataset(args.train_file)
    validation = hfprune.load_dataset(args.validation_file) if args.validation_file else None
    string_labels = isinstance(train[0][args.label_column], str)
    labels = sorted(set(train[args.label_column])) if string_labels else None
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    config = transformers.AutoConfig.from_pretrained(args.model)
    if labels is not None:
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.id2label = dict(enumerate(labels))
        config.num_labels = len(labels)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, config=config)
    # The classifier's forward takes **kwargs, so the Trainer would take its loss for one normalised by the
    # `num_items_in_batch` it passes, and rescale it: times the number of processes under DDP, and not divided
    # for gradient accumulation. It is a plain per-batch mean.
    model.accepts_loss_kwargs = False
    label2id = config.label2id or {}
    training_args = transformers.TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size, learning_rate=args.learning_rate,
        seed=args.seed, eval_strategy="epoch" if validation is not None else "no", save_strategy="no",
        logging_steps=10, report_to=[], push_to_hub=args.push_to_hub, hub_model_id=args.hub_model_id,
        # Only when told there is no accelerator does a multi-process launch on CPU (torchrun, `accelerate launch
        # --multi_gpu`) become one distributed run (gloo) rather than N independent ones.
        use_cpu=not has_accelerator(),
    )
    trainer = transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=prepare(train, tokenizer, args, label2id),
        eval_dataset=prepare(validation, tokenizer, args, label2id) if validation is not None else None,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=[hfprune.PruningCallback(recipe)],
    )
    trainer.train()
    if validation is not None:
        print(trainer.evaluate())  # the physically pruned model
    trainer.save_model()
    tokenizer.save_pretrained(args.output_dir)
    print(hfprune.count(model, seq_len=args.max_length))
    if args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    main()
