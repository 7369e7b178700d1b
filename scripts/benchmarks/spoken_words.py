"""A small keyword-spotting set, synthesized offline with espeak-ng: spoken words × voices × speeds × pitches.

Like the ten command words of Speech Commands, but made on this machine, so tests and demos need no download:

    from scripts.benchmarks.spoken_words import spoken_words
    data = spoken_words("~/.cache/hfprune/spoken_words")   # DatasetDict: train / validation
    data["train"][0]   # {"audio": [...16000 float32...], "label": 0, "word": "yes", "voice": "en", ...}

Every clip is espeak-ng's 22050 Hz output, trimmed of its leading/trailing silence, resampled to 16 kHz
(windowed-sinc polyphase, below) and centred in a fixed window (1 s by default). Synthesis is deterministic, and
the raw espeak-ng files are cached under the directory given, so a second call reads them back without
espeak-ng. The split is by voice: validation voices are never heard in training.

espeak-ng comes from the distribution (Debian/Ubuntu: `apt-get install espeak-ng`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# espeak-ng's own English voices (no mbrola needed); `+f2`/`+m3` are its voice variants.
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-us+f3")
VALIDATION_VOICES = ("en-029", "en+f2")
SPEEDS = (130, 175)  # words per minute
PITCHES = (35, 65)  # 0-99
SAMPLING_RATE = 16_000
ESPEAK_RATE = 22_050


class SpokenWordsError(RuntimeError):
    """espeak-ng is missing or failed, or the requested set is malformed."""


# ------------------------------------------------------------------------------------------- resampling


def resample(audio: np.ndarray, orig_rate: int, target_rate: int, half_width: int = 16) -> np.ndarray:
    """Resample a 1-D signal by a rational factor with a Hann-windowed sinc low-pass (polyphase: the output
    samples of one period share `target/gcd` filter phases, computed once).

    Args:
        audio: the samples, 1-D.
        orig_rate, target_rate: sampling rates in Hz.
        half_width: filter zero crossings on each side; more is sharper and slower.

    Returns:
        float32 samples at `target_rate`, `ceil(len(audio) * target_rate / orig_rate)` of them.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if orig_rate == target_rate:
        return audio.astype(np.float32)
    divisor = math.gcd(orig_rate, target_rate)
    up, down = target_rate // divisor, orig_rate // divisor
    # Cut off a little below the lower Nyquist frequency so that the window's transition band does not alias.
    cutoff = min(1.0, target_rate / orig_rate) * 0.95  # as a fraction of the input's Nyquist frequency
    reach = math.ceil(half_width / cutoff)  # filter half length, in input samples
    offsets = np.arange(-reach + 1, reach + 1)
    phases = np.arange(up) / up  # fractional input position of each output phase
    x = offsets[None, :] - phases[:, None]
    taps = cutoff * np.sinc(cutoff * x) * (0.5 + 0.5 * np.cos(np.pi * np.clip(x / reach, -1, 1)))
    count = -(-len(audio) * up // down)
    position = np.arange(count) * down  # in units of 1/up input samples
    base, phase = position // up, position % up
    padded = np.concatenate([np.zeros(reach), audio, np.zeros(reach + 1)])
    windows = padded[base[:, None] + offsets[None, :] + reach]
    return (windows * taps[phase]).sum(axis=1).astype(np.float32)


# -------------------------------------------------------------------------------------------- synthesis


def _espeak() -> str:
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise SpokenWordsError(
            "espeak-ng is not installed, and it synthesizes the spoken-word set: install it "
            "(Debian/Ubuntu: apt-get install espeak-ng) or give a dataset of your own"
        )
    return executable


def _synthesize(word: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    """Write espeak-ng's wav for one clip to `path`, atomically (parallel processes may share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    command = [_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(partial), word]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise SpokenWordsError(f"espeak-ng failed on {word!r} with voice {voice!r}: {result.stderr.strip()}")
    os.replace(partial, path)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as file:
        if file.getsampwidth() != 2:
            raise SpokenWordsError(f"{path}: expected 16-bit PCM, got {8 * file.getsampwidth()}-bit")
        frames = file.readframes(file.getnframes())
        audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
        channels, rate = file.getnchannels(), file.getframerate()
    return audio.reshape(-1, channels).mean(axis=1), rate


def _trim(audio: np.ndarray, threshold: float = 0.01, margin: int = 64) -> np.ndarray:
    """Drop leading/trailing near-silence (below `threshold` of the peak), keeping `margin` samples for the
    resampling filter's tails."""
    loud = np.flatnonzero(np.abs(audio) > threshold * max(float(np.abs(audio).max()), 1e-8))
    if not len(loud):
        return audio
    return audio[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    """Centre the word in `length` samples, cropping a longer one to its middle."""
    if len(audio) >= length:
        start = (len(audio) - length) // 2
        return audio[start : start + length]
    left = (length - len(audio)) // 2
    return np.pad(audio, (left, length - len(audio) - left)).astype(np.float32)


def speak(
    text: str, voice: str, speed: int, pitch: int, cache_dir: str | os.PathLike, name: str | None = None
) -> np.ndarray:
    """`text` spoken by one espeak-ng voice, trimmed of leading/trailing silence, as float32 mono samples at
    16 kHz. espeak-ng's wav is cached as `cache_dir/espeak-ng/VOICE/sSPEED-pPITCH/NAME.wav` (`name` defaults to
    the text itself; give a short one, e.g. a hash, for sentences)."""
    path = Path(cache_dir).expanduser() / "espeak-ng" / voice / f"s{speed}-p{pitch}" / f"{name or text}.wav"
    if not path.exists():
        _synthesize(text, voice, speed, pitch, path)
    audio, rate = _read_wav(path)
    return resample(_trim(audio), rate, SAMPLING_RATE)


def clip(
    word: str, voice: str, speed: int, pitch: int, cache_dir: str | os.PathLike, duration: float = 1.0
) -> np.ndarray:
    """One word spoken by one voice, as float32 mono samples at 16 kHz, `duration` seconds long."""
    return _fit(speak(word, voice, speed, pitch, cache_dir), round(duration * SAMPLING_RATE))


def spoken_words(
    cache_dir: str | os.PathLike,
    words: Sequence[str] = WORDS,
    voices: Sequence[str] = VOICES,
    validation_voices: Sequence[str] = VALIDATION_VOICES,
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
    duration: float = 1.0,
):
    """The spoken-word set as a `datasets.DatasetDict` with `train` (voices) and `validation`
    (validation_voices) splits.

    Columns: `audio` (float32 samples at 16 kHz), `label` (a `ClassLabel` over `words`, in the order given),
    and `word`, `voice`, `speed`, `pitch`. Rows are ordered by voice, speed, pitch, then word, so every label
    occurs equally often in each split.

    Args:
        cache_dir: where espeak-ng's files are kept; reused by later calls.
        words: the classes (each one spoken as written; espeak-ng reads any English text).
        voices, validation_voices: espeak-ng voice names (`espeak-ng --voices=en`) of each split; disjoint.
        speeds: speaking rates in words per minute; pitches: 0-99. Every combination is synthesized.
        duration: clip length in seconds.

    Example:
        ```python
        >>> data = spoken_words("/tmp/sw", words=["yes", "no"], voices=["en"], validation_voices=["en-us"])
        >>> data["train"].num_rows, data["validation"].num_rows, len(data["train"][0]["audio"])
        (8, 8, 16000)
        ```
    """
    import datasets
    import pyarrow as pa

    words, voices, validation_voices = list(words), list(voices), list(validation_voices)
    if not words or len(set(words)) != len(words):
        raise SpokenWordsError(f"words must be a non-empty list without repeats, got {words}")
    shared = sorted(set(voices) & set(validation_voices))
    if shared:
        raise SpokenWordsError(f"voices {shared} are in both splits; a voice belongs to train or to validation")
    features = datasets.Features(
        {
            "audio": datasets.List(datasets.Value("float32")),
            "label": datasets.ClassLabel(names=words),
            "word": datasets.Value("string"),
            "voice": datasets.Value("string"),
            "speed": datasets.Value("int32"),
            "pitch": datasets.Value("int32"),
        }
    )

    def split(split_voices: list[str]):
        audio, columns = [], {name: [] for name in ("label", "word", "voice", "speed", "pitch")}
        for voice in split_voices:
            for speed in speeds:
                for pitch in pitches:
                    for label, word in enumerate(words):
                        audio.append(clip(word, voice, speed, pitch, cache_dir, duration))
                        for name, value in zip(columns, (label, word, voice, speed, pitch), strict=True):
                            columns[name].append(value)
        # One Arrow list array from one buffer: converting clip by clip costs seconds for a few hundred clips.
        flat = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        offsets = np.cumsum([0] + [len(a) for a in audio], dtype=np.int32)
        arrays = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))]
        arrays += [pa.array(columns[name], features.arrow_schema.field(name).type) for name in columns]
        table = pa.Table.from_arrays(arrays, schema=features.arrow_schema)
        return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))

    return datasets.DatasetDict({"train": split(voices), "validation": split(validation_voices)})
