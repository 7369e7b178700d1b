"""scripts/benchmarks/speech_eval_set.py: espeak-ng sentences for speech recognition, and WER after Whisper's
normalizer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from scripts.benchmarks import speech_eval_set as ses
from scripts.benchmarks.spoken_words import SpokenWordsError

espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng synthesizes the set")


def test_splits_share_neither_sentences_nor_voices():
    assert not set(ses.TRAIN_SENTENCES) & set(ses.TEST_SENTENCES)
    assert not set(ses.TRAIN_VOICES) & set(ses.TEST_VOICES)
    sentences = ses.TRAIN_SENTENCES + ses.TEST_SENTENCES
    assert 40 <= len(set(sentences)) == len(sentences) <= 60
    assert all(5 <= len(s.split()) <= 15 for s in sentences)
    assert not any(ch.isdigit() for s in sentences for ch in s)
    with pytest.raises(SpokenWordsError, match="share neither"):
        ses.speech_eval_set("/nonexistent", train_voices=["en"], test_voices=["en"])


@espeak
def test_clips_are_deterministic_16khz_float32_and_cached(tmp_path):
    subset = dict(
        train_sentences=["Please close the door."],
        test_sentences=["Where are my keys?", "It is cold outside."],
        train_voices=["en"],
        test_voices=["en-us"],
        train_speeds=[160],
        test_speeds=[150, 190],
    )
    first = ses.speech_eval_set(tmp_path / "a", **subset)
    second = ses.speech_eval_set(tmp_path / "b", **subset)  # synthesized again, from scratch
    assert (first["train"].num_rows, first["test"].num_rows) == (1, 4)
    assert first["test"]["text"] == ["Where are my keys?", "It is cold outside."] * 2
    for a, b in zip(first["test"]["audio"], second["test"]["audio"], strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert a.dtype == np.float32 and 0.5 * 16_000 < len(a) < 4 * 16_000
        np.testing.assert_array_equal(a, b)
    slow, fast = (len(a) for a in first["test"]["audio"][::2])  # the same sentence at 150 and 190 wpm
    assert slow > fast
    assert len(list((tmp_path / "a").rglob("*.wav"))) == 5
    only_test = ses.speech_eval_set(tmp_path / "a", splits=["test"], **subset)
    assert list(only_test) == ["test"]
    with pytest.raises(SpokenWordsError, match="unknown splits"):
        ses.speech_eval_set(tmp_path / "a", splits=["validation"], **subset)


def test_wer_normalizes_like_whisper():
    assert ses.wer(["the cat sat on the mat"], ["The cat sat on the mat."]) == 0.0
    assert ses.wer(["it is mister smith"], ["It's Mr. Smith!"]) == 0.0
    assert ses.wer(["the cat sat on a mat"], ["The cat sat on the mat."]) == pytest.approx(1 / 6)
    # Corpus WER: errors over all reference words, not the mean of per-sentence rates.
    assert ses.wer(["a b", "c d e f"], ["a x", "c d e f"]) == pytest.approx(1 / 6)
    assert ses.wer([""], ["hello there"]) == 1.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        ses.wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="normalize to nothing"):
        ses.wer(["a"], ["?!"])
    with pytest.raises(ValueError, match="no references"):
        ses.wer([], [])
