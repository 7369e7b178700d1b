"""Fine-tune a causal language model on text and prune it while training, driven by an hfprune recipe.

The pruning options (budget, criterion, schedule, distillation) come from the recipe, not from flags. Sharded
over GPUs with FSDP2, as large models are trained (set `fsdp_transformer_layer_cls_to_wrap` in the config file to
the model's decoder layer class, e.g. LlamaDecoderLayer):

    python scripts/examples/run_causal_lm.py --model HuggingFaceTB/SmolLM2-135M --train_file train.txt \\
        --recipe recipes/llama-gradual-fisher.yaml --output_dir out/pruned-lm --max_steps 200
    accelerate launch --config_file scripts/examples/accelerate_fsdp2.yaml scripts/examples/run_causal_lm.py ...

Data: a text file (one document per line) or anything `hfprune.load_dataset` reads, with a text column. Lines are
tokenized, concatenated and cut into blocks of `--block_size` tokens. The pruned model is saved (reloadable with
`hfprune.from_pretrained`; uniform Llama-family shapes also with plain `from_pretrained`) with its tokenizer.
"""

from __future__ import annotations

import argparse

import torch
import transformers

import hfprune


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="local directory or Hub id of the model to fine-tune")
    parser.add_argument("--recipe", required=True, help="hfprune recipe (YAML/JSON) with a schedule")
    parser.add_argument("--train_file", required=True, help="training text (file or saved datasets dir)")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def blocks(split, tokenizer, args):
    """Tokenize, concatenate and cut into `block_size` blocks; labels are the inputs (the model shifts them)."""

    def group(rows):
        ids = [token for text in rows[args.text_column] for token in tokenizer(text)["input_ids"]]
        usable = len(ids) // args.block_size * args.block_size
        chunks = [ids[i : i + args.block_size] for i in range(0, usable, args.block_size)]
        return {"input_ids": chunks, "attention_mask": [[1] * len(c) for c in chunks], "labels": chunks}

    return split.map(group, batched=True, remove_columns=split.column_names)


def has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def main(argv=None) -> None:
    args = parse_args(argv)
    recipe = hfprune.Recipe.load(args.recipe)  # a bad recipe fails before anything is loaded
    transformers.set_seed(args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    train = blocks(hfprune.load_dataset(args.train_file), tokenizer, args)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
    training_args = transformers.TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size, learning_rate=args.learning_rate,
        seed=args.seed, save_strategy="no", logging_steps=10, report_to=[],
        # Only when told there is no accelerator does a multi-process launch on CPU become one distributed run.
        use_cpu=not has_accelerator(),
    )
    callback = hfprune.PruningCallback(recipe, seq_len=args.block_size)
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=train, callbacks=[callback])
    trainer.train()
    # The callback left the model pruned, plain and whole on every process, under FSDP2 too; the Trainer's
    # save_model would save nothing with sharded FSDP checkpoints (SHARDED_STATE_DICT), so the main process saves.
    if trainer.is_world_process_zero():
        hfprune.save_pretrained(model, args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    print(hfprune.count(model, seq_len=args.block_size))


if __name__ == "__main__":
    main()
