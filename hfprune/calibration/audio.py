"""Audio calibration data for the CLI: a directory of audio files, or a dataset (CSV/JSON file, saved `datasets`
directory, Hub dataset) with an audio column, turned into model-ready batches with the model's own feature
extractor (`input_values` for wav2vec2/HuBERT/WavLM, `input_features` for Whisper)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .data import _LABEL_COLUMNS, _label, _pick, load_dataset

AUDIO_EXTENSIONS = (".flac", ".ogg", ".wav")
AUDIO_INPUTS = ("input_values", "input_features")
_AUDIO_COLUMNS = ("audio", "path", "file", "filename", "audio_path", "speech")
# Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write: such a directory is a dataset, not audio files.
_SAVED_DATASET_FILES = ("state.json", "dataset_dict.json", "dataset_info.json")


@dataclass
class Clip:
    """One calibration example before feature extraction.

    Args:
        source: where the samples come from: a file path, or a `datasets.Audio` value (`{"path", "bytes"}` or a
            decoded `{"array", "sampling_rate"}`).
        name: what error messages call it (the file name, or the dataset row).
        label: the class label, as stored (integer or string), or `None`.
    """

    source: object
    name: str
    label: object = None


def is_audio_model(model) -> bool:
    """Whether `model` reads audio: its `main_input_name` is raw samples (wav2vec2 family) or mel features
    (Whisper). Asking the model, not the data, means a text column never gets fed to a speech model by guess."""
    return getattr(model, "main_input_name", None) in AUDIO_INPUTS


def takes_class_labels(model) -> bool:
    """Whether `model` is an audio classifier, whose labels are one class per clip. CTC and Whisper labels are token
    sequences, so a `label` column means nothing to them: without labels, criteria use the model's own
    predictions (Whisper: its own transcripts, see `seq2seq.py`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES

    return type(model).__name__ in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES.values()


def load_feature_extractor(model_path: str):
    """The feature extractor saved with the model (`preprocessor_config.json`), or a DataError saying it is missing.

    Calibration must see what the model saw in training: its sampling rate, normalisation and (for Whisper) mel
    filter bank, so no default extractor is made up here.
    """
    import transformers

    try:
        return transformers.AutoFeatureExtractor.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise DataError(
            f"{model_path} has no feature extractor config (preprocessor_config.json), which audio calibration data "
            "needs for the sampling rate and features the model expects; save the model's feature extractor there "
            f"(`AutoFeatureExtractor.from_pretrained(BASE).save_pretrained({model_path!r})`). ({error})"
        ) from error


def audio_clips(
    source: str,
    split: str | None = None,
    audio_column: str | None = None,
    label_column: str | None = None,
    labelled: bool = True,
) -> list[Clip]:
    """The calibration clips of `source`: every audio file under a directory (sorted, no labels), or the rows of a
    dataset with an audio column.

    Args:
        source: a directory of `.wav`/`.flac`/`.ogg` files, a saved `datasets` directory, a CSV/JSON file or a Hub
            dataset name.
        split: the dataset split (default: train, or the first one).
        audio_column: the column holding the audio: file paths (relative ones are read beside a CSV/JSON file) or
            a `datasets.Audio` feature. Default: the first of audio/path/file/... that exists.
        label_column: the column holding class labels, if any. Default: label/labels when present.
        labelled: whether the model takes class labels (`takes_class_labels`); if not, no label column is read.

    Returns:
        A list of `Clip`s, in the order of the source.
    """
    path = Path(source)
    if path.is_dir() and not any((path / name).exists() for name in _SAVED_DATASET_FILES):
        return _directory_clips(path)
    if not labelled and label_column is not None:
        raise DataError(
            f"label column {label_column!r} given, but the model is not an audio classifier (its labels would be "
            "token sequences); leave it out: the model's own predictions stand in for labels"
        )
    return _dataset_clips(load_dataset(source, split), path, audio_column, label_column, labelled)


def _directory_clips(directory: Path) -> list[Clip]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataError(
            f"{directory} has no audio files ({', '.join(AUDIO_EXTENSIONS)}) and is not a saved datasets directory"
        )
    return [Clip(source=str(f), name=str(f)) for f in files]


def _dataset_clips(
    dataset, source: Path, audio_column: str | None, label_column: str | None, labelled: bool
) -> list[Clip]:
    import datasets

    columns = list(dataset.column_names)
    audio_column = _pick(columns, audio_column, _AUDIO_COLUMNS, "audio", required=True)
    label_column = _pick(columns, label_column, _LABEL_COLUMNS, "label", required=False) if labelled else None
    if isinstance(dataset.features[audio_column], datasets.Audio):
        # Undecoded: datasets decodes audio through torchcodec, which hfprune does not require; soundfile reads
        # the stored bytes or path just as well.
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    base = source.parent if source.is_file() else None
    labels = dataset[label_column] if label_column else [None] * len(dataset)
    clips = []
    for row, (value, label) in enumerate(zip(dataset[audio_column], labels, strict=True)):
        if isinstance(value, str):
            value = _resolve(value, base)
        elif not isinstance(value, dict):
            raise DataError(
                f"row {row} of {audio_column!r} is a {type(value).__name__}, not a file path or an audio value; raw "
                "samples need their rate: store {'array', 'sampling_rate'} or cast the column to datasets.Audio"
            )
        if label_column and label is None:
            # One unlabelled row would leave its batch without labels and the loss inconsistent across batches.
            raise DataError(f"row {row} has no {label_column!r}; label every row or pass no label column")
        name = value if isinstance(value, str) else value.get("path") or f"row {row}"
        clips.append(Clip(source=value, name=f"{name} (row {row} of {audio_column!r})", label=label))
    return clips


def _resolve(path: str, base: Path | None) -> str:
    """A relative path in a CSV/JSON file means beside that file, unless it exists from the working directory."""
    if base is None or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(base / path)


def read_audio(clip: Clip) -> tuple[np.ndarray, int]:
    """The samples of `clip` as mono float32 and their sampling rate.

    Raises:
        DataError: the file is missing, unreadable or corrupt, or holds no samples; the message names it.
    """
    source = clip.source
    if isinstance(source, dict) and source.get("array") is not None:
        samples, rate = np.asarray(source["array"], dtype=np.float32), source.get("sampling_rate")
        if rate is None:
            raise DataError(f"{clip.name}: decoded audio without a sampling_rate")
    else:
        samples, rate = _read_file(clip)
    if samples.ndim == 2:
        # soundfile gives (frames, channels); the average keeps both channels' content at the same loudness.
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise DataError(f"{clip.name}: the audio is empty (no samples)")
    return samples.astype(np.float32, copy=False), int(rate)


def _read_file(clip: Clip) -> tuple[np.ndarray, int]:
    import io

    import soundfile

    source = clip.source
    if isinstance(source, dict):
        source = io.BytesIO(source["bytes"]) if source.get("bytes") else source.get("path")
    if source is None or (isinstance(source, str) and not Path(source).is_file()):
        raise DataError(f"{clip.name}: no such audio file")
    try:
        return soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as error:
        raise DataError(f"{clip.name}: cannot read the audio ({error})") from error


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """`samples` at `target_rate`: torchaudio's band-limited sinc resampler when installed, else scipy's polyphase
    filter (scipy is a dependency of hfprune; an environment without either gets a DataError naming both rates)."""
    if orig_rate == target_rate:
        return samples
    try:
        import torchaudio.functional

        return torchaudio.functional.resample(torch.from_numpy(samples), orig_rate, target_rate).numpy()
    except ImportError:
        pass
    try:
        import scipy.signal
    except ImportError:
        raise DataError(
            f"the audio is sampled at {orig_rate} Hz but the model's feature extractor expects {target_rate} Hz; "
            "install torchaudio (or scipy) to resample it, or resample the files beforehand"
        ) from None
    divisor = np.gcd(orig_rate, target_rate)
    return scipy.signal.resample_poly(samples, target_rate // divisor, orig_rate // divisor).astype(np.float32)


def audio_batches(
    clips: list[Clip],
    feature_extractor,
    main_input_name: str,
    batch_size: int = 16,
    num_samples: int | None = None,
    max_duration: float | None = 30.0,
    label2id: dict | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Read, resample and featurize `clips` into padded batches for a speech model.

    Args:
        clips: from `audio_clips`.
        feature_extractor: the model's own (`load_feature_extractor`).
        main_input_name: `model.main_input_name`: `input_values` (padded to the longest clip of each batch, with
            `attention_mask` when the extractor returns one) or `input_features` (Whisper: padded to its fixed
            window, as in training).
        batch_size: clips per batch.
        num_samples: use at most this many clips (the first ones).
        max_duration: cut clips to this many seconds (`None`: keep them whole).
        label2id: the model's label map, for string labels. Labels are kept only when the clips have them.

    Returns:
        A list of dicts of tensors, ready for `hfprune.prune(..., calibration=...)`.
    """
    rate = int(feature_extractor.sampling_rate)
    clips = clips[: num_samples or len(clips)]
    batches = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        waves = [_prepared(clip, rate, max_duration) for clip in chunk]
        batch = _featurize(feature_extractor, waves, rate, main_input_name)
        if all(clip.label is not None for clip in chunk):
            batch["labels"] = torch.tensor([_label(clip.label, label2id) for clip in chunk])
        batches.append(batch)
    return batches


def _prepared(clip: Clip, rate: int, max_duration: float | None) -> np.ndarray:
    samples, clip_rate = read_audio(clip)
    samples = resample(samples, clip_rate, rate)
    return samples if max_duration is None else samples[: max(1, round(max_duration * rate))]


def _featurize(feature_extractor, waves: list[np.ndarray], rate: int, main_input_name: str) -> dict:
    if main_input_name == "input_values":
        encoded = feature_extractor(waves, sampling_rate=rate, padding=True, return_tensors="pt")
    else:
        # Whisper's extractor pads every clip to its fixed window (30 s), the only length its encoder accepts.
        encoded = feature_extractor(waves, sampling_rate=rate, return_tensors="pt")
    if main_input_name not in encoded:
        raise DataError(
            f"{type(feature_extractor).__name__} returns {sorted(encoded)}, not the model's input {main_input_name!r}"
        )
    batch = {main_input_name: encoded[main_input_name]}
    # Raw-sample models need the mask to ignore padding; Whisper's encoder always attends to the whole window.
    if main_input_name == "input_values" and "attention_mask" in encoded:
        batch["attention_mask"] = encoded["attention_mask"]
    return batch
