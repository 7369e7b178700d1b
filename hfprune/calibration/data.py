"""Calibration data for the CLI: a local CSV/JSON/text file, a saved `datasets` directory or a Hub dataset,
turned into model-ready batches with the model's own tokenizer (audio for speech models: see `audio.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}
_TEXT_COLUMNS = ("text", "sentence", "content", "question", "premise")
_LABEL_COLUMNS = ("label", "labels")


def load_dataset(source: str, split: str | None = None):
    """Load `source` (file, `save_to_disk` directory, or Hub dataset name) as one `datasets.Dataset`."""
    import datasets

    path = Path(source)
    try:
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{source}: unsupported file type {path.suffix!r}; use {sorted(_FILE_BUILDERS)}")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train", **extra)
        elif path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"could not load calibration data {source!r}: {error}") from error
    if isinstance(loaded, datasets.DatasetDict):
        name = split or ("train" if "train" in loaded else next(iter(loaded)))
        if name not in loaded:
            raise DataError(f"{source} has no split {name!r}; splits: {list(loaded)}")
        loaded = loaded[name]
    if len(loaded) == 0:
        raise DataError(f"calibration data {source!r} is empty")
    return loaded


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, required: bool):
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"no {what} column {wanted!r}; columns are {columns}")
        return wanted
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise DataError(f"cannot tell which column holds the {what}; pass it explicitly (columns: {columns})")
    return found


def text_batches(
    dataset,
    tokenizer,
    batch_size: int = 16,
    max_length: int = 128,
    num_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    label2id: dict | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Tokenize a text dataset into padded batches; labels are kept when a label column exists (strings are
    mapped through the model's `label2id`)."""
    columns = list(dataset.column_names)
    text_column = _pick(columns, text_column, _TEXT_COLUMNS, "text", required=True)
    label_column = _pick(columns, label_column, _LABEL_COLUMNS, "label", required=False)
    rows = dataset.select(range(min(len(dataset), num_samples or len(dataset))))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [str(t) for t in chunk[text_column]]
        batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        if label_column is not None:
            batch["labels"] = torch.tensor([_label(v, label2id) for v in chunk[label_column]])
        batches.append(batch)
    return batches


def _label(value, label2id: dict | None) -> int:
    if isinstance(value, (int, bool)):
        return int(value)
    if label2id and value in label2id:
        return int(label2id[value])
    raise DataError(f"label {value!r} is not an integer and not one of the model's labels {sorted(label2id or {})}")
