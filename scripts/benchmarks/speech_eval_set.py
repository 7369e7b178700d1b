"""A small English speech-recognition set, synthesized offline with espeak-ng: everyday sentences × voices ×
speeds, with a word error rate after Whisper's English normalization.

    from scripts.benchmarks.speech_eval_set import speech_eval_set, wer
    data = speech_eval_set("~/.cache/hfprune/speech_eval")    # DatasetDict: train / test
    data["test"][0]   # {"audio": [...float32 at 16 kHz...], "text": "...", "voice": "en-us", "speed": 150, ...}
    wer(["the cat sat"], ["The cat sat."])                     # 0.0

`train` (for fine-tuning) and `test` share neither sentences nor voices, so a model tuned on `train` is scored
on text it never saw, spoken by voices it never heard. Clips are espeak-ng's output trimmed of silence and
resampled to 16 kHz mono float32 (the helpers of `spoken_words`); synthesis is deterministic and espeak-ng's
wav files are cached under the directory given, named by a hash of the sentence.

The sentences use spellings that American and British English share, and no digits, so that the score does
not hinge on the spelling table of Whisper's normalizer (its `normalizer.json` lives on the Hub; offline, the
normalizer runs without it).

    python -m scripts.benchmarks.speech_eval_set   # synthesize both splits and print their sizes
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence

import numpy as np

from scripts.benchmarks.spoken_words import SAMPLING_RATE, SpokenWordsError, speak

TRAIN_SENTENCES = (
    "Please close the door when you leave the room.",
    "The bus was late again this morning.",
    "I would like a cup of tea with milk.",
    "Can you tell me where the train station is?",
    "She reads a book before going to sleep.",
    "We need to buy bread, eggs and cheese.",
    "The children played in the garden all afternoon.",
    "My phone battery is almost empty.",
    "He forgot his keys at the office.",
    "It is going to rain later today.",
    "Turn left at the next corner and keep going.",
    "The meeting has been moved to Friday afternoon.",
    "Our neighbors have a small brown dog.",
    "Dinner will be ready in a few minutes.",
    "I left my umbrella on the train.",
    "Could you speak a little more slowly, please?",
    "The shop opens at nine in the morning.",
    "They are planning a trip to the mountains.",
    "Water the plants while I am away.",
    "This soup needs a little more salt.",
    "The movie was longer than we expected.",
    "Write your name at the top of the page.",
    "The baby is sleeping, so please be quiet.",
    "We walked along the river after lunch.",
    "Do you know what time the film starts?",
    "The printer on the second floor is broken.",
    "She bought a new jacket for the winter.",
    "Let me know if you need any help.",
    "The kitchen window looks out over the hills.",
    "He runs in the park every morning before work.",
    "I cannot find the remote control anywhere.",
    "The library is closed on public holidays.",
)
TEST_SENTENCES = (
    "The weather is nice today, so we will walk to the park.",
    "Please send me the report by the end of the week.",
    "My brother works at a hospital in the city.",
    "We are out of milk and coffee.",
    "The flight was delayed because of the storm.",
    "Remember to lock the back door tonight.",
    "I think we should take a short break.",
    "The cat is sitting on the kitchen table.",
    "Her new car is fast and very quiet.",
    "Where did you put the car keys?",
    "The teacher asked the students to open their books.",
    "We had pasta and salad for dinner last night.",
    "The museum is free on Sunday mornings.",
    "He called his mother to wish her a happy birthday.",
    "Can we meet at the cafe near the station?",
    "The garden looks beautiful in the spring.",
)
# espeak-ng's own English voices (no mbrola needed); `+f2`, `+m3` are its voice variants.
TRAIN_VOICES = ("en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en+m3")
TEST_VOICES = ("en-us", "en-us+f2", "en-gb-x-gbclan")
TRAIN_SPEEDS = (140, 175)  # words per minute
TEST_SPEEDS = (150, 185)
PITCH = 50


def _name(sentence: str) -> str:
    return hashlib.sha1(sentence.encode("utf-8")).hexdigest()[:16]


def sentence_clips(
    sentences: Sequence[str],
    voices: Sequence[str],
    speeds: Sequence[int],
    cache_dir: str | os.PathLike,
    pitch: int = PITCH,
) -> dict[str, list]:
    """Every sentence × voice × speed as columns (audio, text, voice, speed, pitch), ordered by voice, speed,
    then sentence."""
    columns: dict[str, list] = {"audio": [], "text": [], "voice": [], "speed": [], "pitch": []}
    for voice in voices:
        for speed in speeds:
            for sentence in sentences:
                audio = speak(sentence, voice, speed, pitch, cache_dir, name=_name(sentence))
                if not len(audio):
                    raise SpokenWordsError(f"espeak-ng produced no audio for {sentence!r} with voice {voice!r}")
                for key, value in zip(columns, (audio, sentence, voice, speed, pitch), strict=True):
                    columns[key].append(value)
    return columns


def speech_eval_set(
    cache_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "test"),
    train_sentences: Sequence[str] = TRAIN_SENTENCES,
    test_sentences: Sequence[str] = TEST_SENTENCES,
    train_voices: Sequence[str] = TRAIN_VOICES,
    test_voices: Sequence[str] = TEST_VOICES,
    train_speeds: Sequence[int] = TRAIN_SPEEDS,
    test_speeds: Sequence[int] = TEST_SPEEDS,
):
    """The set as a `datasets.DatasetDict` with the `splits` asked for (`train`: 32 sentences × 5 voices × 2
    speeds = 320 clips; `test`: 16 × 3 × 2 = 96 clips, about 3 s each). Columns: `audio` (float32 at 16 kHz, of
    varying length), `text`, `voice`, `speed`, `pitch`."""
    import datasets

    if set(train_sentences) & set(test_sentences) or set(train_voices) & set(test_voices):
        raise SpokenWordsError("train and test must share neither sentences nor voices")
    unknown = sorted(set(splits) - {"train", "test"})
    if unknown:
        raise SpokenWordsError(f"unknown splits {unknown}: choose from train, test")
    features = datasets.Features(
        {
            "audio": datasets.List(datasets.Value("float32")),
            "text": datasets.Value("string"),
            "voice": datasets.Value("string"),
            "speed": datasets.Value("int32"),
            "pitch": datasets.Value("int32"),
        }
    )
    plan = {"train": (train_sentences, train_voices, train_speeds), "test": (test_sentences, test_voices, test_speeds)}
    result = {}
    for split in splits:
        columns = sentence_clips(*plan[split], cache_dir)
        columns["audio"] = [np.asarray(a, np.float32) for a in columns["audio"]]
        result[split] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(result)


def fortune_sentences(
    count: int, seed: int = 0, topics: Sequence[str] = ("work", "science", "art", "people")
) -> list[str]:
    """`count` real English one-sentence quotes from Debian's `fortunes` (`apt-get install fortunes`), 6 to 16
    words of plain letters and punctuation (no digits, quotes or attributions), in a seeded order: more varied
    speech to train on than `TRAIN_SENTENCES`, never one of `TEST_SENTENCES`."""
    import random
    import re

    from scripts.benchmarks.fortunes import FORTUNES_ROOT, parse_fortune_file

    plain = re.compile(r"^[A-Za-z][A-Za-z ,.'?!;-]+[.?!]$")
    found = []
    for topic in topics:
        for entry in parse_fortune_file(os.path.join(FORTUNES_ROOT, topic)):
            if plain.match(entry) and 6 <= len(entry.split()) <= 16 and entry.count(".") <= 1 and " -- " not in entry:
                found.append(entry)
    found = sorted(set(found) - set(TEST_SENTENCES))
    if len(found) < count:
        raise SpokenWordsError(f"only {len(found)} usable fortune sentences in {topics}, {count} asked for")
    random.Random(seed).shuffle(found)
    return found[:count]


# ------------------------------------------------------------------------------------------------- metric

_normalizer = None


def normalize(text: str) -> str:
    """Whisper's English text normalization (lower case, no punctuation, standard numbers and contractions),
    without the British→American spelling table, which is only on the Hub."""
    global _normalizer
    if _normalizer is None:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        _normalizer = EnglishTextNormalizer({})
    return _normalizer(text)


def wer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate (substitutions + deletions + insertions over reference words, summed over all
    pairs) after `normalize`, computed by jiwer. A reference that normalizes to nothing is an error."""
    import jiwer

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score")
    hypotheses = [normalize(p) for p in predictions]
    truths = [normalize(r) for r in references]
    empty = [r for r, t in zip(references, truths, strict=True) if not t.strip()]
    if empty:
        raise ValueError(f"references that normalize to nothing: {empty[:3]}")
    return float(jiwer.wer(truths, hypotheses))


if __name__ == "__main__":
    data = speech_eval_set(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/hfprune/speech_eval")
    for split, rows in data.items():
        seconds = sum(len(a) for a in rows["audio"]) / SAMPLING_RATE
        print(f"{split}: {rows.num_rows} clips, {seconds / 60:.1f} min, voices {sorted(set(rows['voice']))}")
