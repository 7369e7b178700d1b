"""Fine-tune a speech classifier (wav2vec2, HuBERT, WavLM) and prune it while training, driven by an hfprune recipe.

The pruning options (budget, criterion, schedule, distillation) come from the recipe, not from flags. Without a
dataset, the script trains on spoken words synthesized with espeak-ng (`scripts/benchmarks/spoken_words.py`: 10
words, held-out voices for validation). Run it as a module from the repository root (it imports that data set):

    python -m scripts.examples.run_speech_classification --model facebook/wav2vec2-base \\
        --recipe recipes/wav2vec2-gradual-fisher.yaml --output_dir out/w2v2-words --num_train_epochs 10
    torchrun --nproc_per_node 2 -m scripts.examples.run_speech_classification ...
    accelerate launch --multi_gpu --num_processes 2 -m scripts.examples.run_speech_classification ...  # or CPU (gloo)

(`accelerate launch --cpu --num_processes 2` starts a single process: accelerate's `--cpu` launcher is one process
unless it is given an MPI setup.)

`--from_config config.json` starts from a randomly initialised model of that configuration instead (offline
smoke tests). Own data: `--train_dir`/`--validation_dir`, saved `datasets` directories (`save_to_disk`) with an
audio column (16 kHz sample arrays, or `{"array", "sampling_rate"}` mappings) and an integer or string label
column. The pruned model is saved (reloadable with `hfprune.from_pretrained`) with its feature extractor;
`--push_to_hub` pushes both with the Trainer.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import transformers

import hfprune
from scripts.benchmarks import spoken_words

SAMPLING_RATE = spoken_words.SAMPLING_RATE


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="local directory or Hub id of the model to fine-tune")
    model.add_argument("--from_config", help="config.json (or a directory with one): train from random weights")
    parser.add_argument("--recipe", required=True, help="hfprune recipe (YAML/JSON) with a schedule")
    parser.add_argument("--train_dir", help="saved datasets directory to train on (default: synthesized words)")
    parser.add_argument("--validation_dir", help="saved datasets directory to evaluate on")
    parser.add_argument("--audio_column", default="audio")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--data_dir", default="~/.cache/hfprune/spoken_words", help="cache of synthesized audio")
    parser.add_argument("--words", nargs="+", default=list(spoken_words.WORDS), help="synthesized classes")
    parser.add_argument("--voices", nargs="+", default=list(spoken_words.VOICES), help="espeak-ng training voices")
    parser.add_argument("--validation_voices", nargs="*", default=list(spoken_words.VALIDATION_VOICES))
    parser.add_argument("--max_train_samples", type=int)
    parser.add_argument("--max_eval_samples", type=int)
    parser.add_argument("--max_duration", type=float, default=1.0, help="seconds; longer clips are cut")
    parser.add_argument(
        "--freeze_feature_encoder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the CNN feature encoder fixed (the usual choice when fine-tuning)",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train_epochs", type=float, default=5.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id")
    return parser.parse_args(argv)


# -------------------------------------------------------------------------------------------------- data


def load_splits(args, training_args):
    """(train, validation or None, label names): the saved datasets given, else the synthesized words."""
    if args.train_dir is None:
        # Rank 0 synthesizes into the cache first; the other ranks then read it.
        with training_args.main_process_first(desc="synthesizing spoken words"):
            data = spoken_words.spoken_words(
                args.data_dir,
                words=args.words,
                voices=args.voices,
                validation_voices=args.validation_voices,
                duration=args.max_duration,
            )
        train, validation = data["train"], data["validation"]
        validation = validation if len(validation) else None
    else:
        train = hfprune.load_dataset(args.train_dir)
        validation = hfprune.load_dataset(args.validation_dir) if args.validation_dir else None
    for name, split in (("train", train), ("validation", validation)):
        missing = [c for c in (args.audio_column, args.label_column) if split is not None and c not in split.features]
        if missing:
            raise SystemExit(f"{name} data has no column(s) {missing}; columns are {list(split.features)}")
    feature = train.features[args.label_column]
    if hasattr(feature, "names"):  # a ClassLabel
        labels = list(feature.names)
    elif isinstance(train[0][args.label_column], str):
        labels = sorted(set(train[args.label_column]))
    else:
        labels = [str(i) for i in range(max(train[args.label_column]) + 1)]
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    if validation is not None and args.max_eval_samples is not None:
        validation = validation.shuffle(seed=args.seed).select(range(min(args.max_eval_samples, len(validation))))
    return train, validation, labels


def prepare(split, feature_extractor, args, labels):
    """Normalised `input_values` (cut to max_duration) and integer `labels`."""
    label2id = {label: i for i, label in enumerate(labels)}
    max_length = round(args.max_duration * feature_extractor.sampling_rate)

    def encode(rows):
        waves = []
        for audio in rows[args.audio_column]:
            rate = SAMPLING_RATE
            if isinstance(audio, dict):  # a decoded datasets.Audio value
                audio, rate = audio["array"], audio["sampling_rate"]
            audio = np.asarray(audio, dtype=np.float32)
            if rate != feature_extractor.sampling_rate:
                audio = spoken_words.resample(audio, rate, feature_extractor.sampling_rate)
            waves.append(audio[:max_length])
        encoded = feature_extractor(waves, sampling_rate=feature_extractor.sampling_rate)
        unknown = sorted({v for v in rows[args.label_column] if isinstance(v, str) and v not in label2id})
        if unknown:
            raise SystemExit(f"labels {unknown} do not occur in the training data ({labels})")
        encoded["labels"] = [label2id[v] if isinstance(v, str) else int(v) for v in rows[args.label_column]]
        return encoded

    return split.map(encode, batched=True, batch_size=64, remove_columns=split.column_names)


class Collator:
    """Pads `input_values` (and `attention_mask`, for extractors that return one) to the longest clip."""

    def __init__(self, feature_extractor):
        self.feature_extractor = feature_extractor

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        keys = [k for k in ("input_values", "attention_mask") if k in rows[0]]
        batch = self.feature_extractor.pad([{k: row[k] for k in keys} for row in rows], return_tensors="pt")
        batch["labels"] = torch.tensor([row["labels"] for row in rows])
        return dict(batch)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


# ------------------------------------------------------------------------------------------------- model


def encoder_frames(config, samples: int) -> int:
    """How many encoder frames the CNN feature encoder makes of `samples` audio samples (49 for 1 s at 16 kHz
    with wav2vec2-base's convolutions): the sequence length the pruning budget is counted at."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        samples = (samples - kernel) // stride + 1
    return samples


def load_model(args, labels):
    label_fields = dict(
        num_labels=len(labels), label2id={label: i for i, label in enumerate(labels)}, id2label=dict(enumerate(labels))
    )
    if args.from_config is not None:
        config = transformers.AutoConfig.from_pretrained(args.from_config, **label_fields)
        model = transformers.AutoModelForAudioClassification.from_config(config)
        source = Path(args.from_config)
        source = source if source.is_dir() else source.parent
        if (source / "preprocessor_config.json").exists():
            feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(source)
        else:
            feature_extractor = transformers.Wav2Vec2FeatureExtractor(
                sampling_rate=SAMPLING_RATE,
                do_normalize=True,
                return_attention_mask=config.feat_extract_norm == "layer",
            )
    else:
        config = transformers.AutoConfig.from_pretrained(args.model)
        same_labels = config.id2label and [config.id2label[i] for i in range(len(config.id2label))] == labels
        config = transformers.AutoConfig.from_pretrained(args.model, **label_fields)
        # A new label set (or a checkpoint without a classifier) gets a fresh classification head.
        model = transformers.AutoModelForAudioClassification.from_pretrained(
            args.model, config=config, ignore_mismatched_sizes=not same_labels
        )
        feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(args.model)
    if args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    # The classifiers' forward takes **kwargs, so the Trainer would assume their loss is normalised by the
    # `num_items_in_batch` it passes, and rescale it: by the number of processes under DDP, and not for gradient
    # accumulation. Their loss is a plain per-batch mean.
    model.accepts_loss_kwargs = False
    return model, feature_extractor


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def main(argv=None) -> transformers.Trainer:
    """Run the script; returns the Trainer, whose model is the pruned one."""
    args = parse_args(argv)
    recipe = hfprune.Recipe.load(args.recipe)  # a bad recipe fails before anything is loaded
    transformers.set_seed(args.seed)
    has_validation = bool(args.validation_dir) if args.train_dir else bool(args.validation_voices)
    training_args = transformers.TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        eval_strategy="epoch" if has_validation else "no",
        save_strategy="no",
        logging_steps=args.logging_steps,
        report_to=[],
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        remove_unused_columns=False,  # the collator needs the rows as prepared
        # Without an accelerator, say so: only then does a multi-process launch (torchrun, `accelerate launch
        # --multi_gpu`) become distributed CPU training (gloo) instead of N independent runs.
        use_cpu=not _has_accelerator(),
    )
    print(
        f"process {training_args.process_index + 1}/{training_args.world_size}, device {training_args.device}, "
        f"{training_args.parallel_mode.value}"
    )
    train, validation, labels = load_splits(args, training_args)
    model, feature_extractor = load_model(args, labels)
    with training_args.main_process_first(desc="feature extraction"):
        train = prepare(train, feature_extractor, args, labels)
        validation = prepare(validation, feature_extractor, args, labels) if validation is not None else None
    frames = encoder_frames(model.config, round(args.max_duration * feature_extractor.sampling_rate))
    if recipe.seq_len is None:
        print(f"recipe has no seq_len: counting FLOPs at {frames} encoder frames ({args.max_duration:g} s)")
    trainer = transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=Collator(feature_extractor),
        processing_class=feature_extractor,
        compute_metrics=accuracy,
        callbacks=[hfprune.PruningCallback(recipe, seq_len=recipe.seq_len or frames)],
    )
    trainer.train()
    if validation is not None:
        print(trainer.evaluate())  # the physically pruned model
    trainer.save_model()  # weights, config, pruning_config.json and the feature extractor
    if trainer.is_world_process_zero():
        print(hfprune.count(model, seq_len=recipe.seq_len or frames))
        print(f"saved to {os.path.abspath(args.output_dir)}")
    if args.push_to_hub:
        trainer.push_to_hub()
    return trainer


if __name__ == "__main__":
    main()
