"""scripts/benchmarks/spoken_words.py (espeak-ng keyword set) and scripts/examples/run_speech_classification.py
on a tiny wav2vec2.

espeak-ng is a system package (`apt-get install espeak-ng`). Without it these tests skip, unless
HFPRUNE_REQUIRE_ESPEAK is set (CI), where they fail and say what is missing.
"""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from tiny_models import AUDIO

import hfprune

if shutil.which("espeak-ng") is None and not os.environ.get("HFPRUNE_REQUIRE_ESPEAK"):
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

from scripts.benchmarks import spoken_words  # noqa: E402
from scripts.examples import run_speech_classification  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "wav2vec2-gradual-fisher.yaml"


def test_resample_keeps_a_tone_at_its_frequency():
    seconds = np.arange(22050) / 22050
    out = spoken_words.resample(np.sin(2 * np.pi * 1000 * seconds), 22050, 16000)
    assert out.dtype == np.float32 and len(out) == 16000
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(out[100:-100] - expected[100:-100]).max() < 1e-3


def test_spoken_words_are_deterministic_16khz_and_balanced(tmp_path):
    subset = dict(
        words=["yes", "no", "stop"],
        voices=["en", "en-gb-scotland"],
        validation_voices=["en-us"],
        speeds=[150],
        pitches=[40, 60],
    )
    first = spoken_words.spoken_words(tmp_path / "a", **subset)
    second = spoken_words.spoken_words(tmp_path / "b", **subset)  # synthesized again, from scratch
    assert first["train"].num_rows == 12 and first["validation"].num_rows == 6
    for split in ("train", "validation"):
        a = np.asarray(first[split]["audio"], dtype=np.float32)
        assert a.tobytes() == np.asarray(second[split]["audio"], dtype=np.float32).tobytes()
        assert a.shape[1] == spoken_words.SAMPLING_RATE  # 1 s at 16 kHz
        assert (np.sqrt((a**2).mean(axis=1)) > 0.01).all(), "every clip holds speech"
        counts = collections.Counter(first[split]["label"])
        assert sorted(counts) == [0, 1, 2] and len(set(counts.values())) == 1
    assert set(first["validation"]["voice"]) == {"en-us"} and "en-us" not in first["train"]["voice"]
    assert first["train"].features["label"].names == ["yes", "no", "stop"]
    # The cache holds espeak-ng's own files; the same bytes came out of both runs.
    cached = sorted((tmp_path / "a").rglob("*.wav"))
    assert len(cached) == 18
    assert all(p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in cached)
    assert spoken_words._read_wav(cached[0])[1] == spoken_words.ESPEAK_RATE


def test_missing_espeak_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(spoken_words.shutil, "which", lambda name: None)
    with pytest.raises(spoken_words.SpokenWordsError, match="espeak-ng is not installed"):
        spoken_words.spoken_words(tmp_path, words=["yes"], voices=["en"], validation_voices=[])


def tiny_wav2vec2(directory: Path) -> Path:
    """A tiny wav2vec2 classifier with wav2vec2-base's CNN strides (1 s -> 49 frames), saved like a Hub model."""
    config = transformers.Wav2Vec2Config(
        **{
            **AUDIO,
            "conv_dim": (16,) * 7,
            "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
            "conv_stride": (5, 2, 2, 2, 2, 2, 2),
            "classifier_proj_size": 16,
            "intermediate_size": 64,
        }
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForSequenceClassification(config).save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(directory)
    return directory


def test_speech_script_prunes_saves_and_reloads(tmp_path):
    model_dir = tiny_wav2vec2(tmp_path / "model")
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(round_neurons=4, schedule={"type": "cubic", "start": 2, "end": 4, "every": 1})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "pruned"
    paths = ["--model", str(model_dir), "--recipe", str(recipe_file), "--output_dir", str(out)]
    options = (
        "--words yes no up --voices en en-us --validation_voices en-029 --max_train_samples 16 --max_eval_samples 8 "
        "--max_steps 5 --per_device_train_batch_size 4 --learning_rate 1e-3 --logging_steps 1"
    )
    trainer = run_speech_classification.main([*paths, "--data_dir", str(tmp_path / "cache"), *options.split()])
    dense = transformers.AutoModelForAudioClassification.from_pretrained(model_dir)
    reloaded = hfprune.from_pretrained(out).eval()
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in dense.parameters())
    assert hfprune.count(reloaded, 49).flops <= 0.4 * hfprune.count(dense, 49).flops
    assert reloaded.config.id2label == {0: "yes", 1: "no", 2: "up"}
    feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(out)
    clips = spoken_words.spoken_words(
        tmp_path / "cache", words=["yes", "no", "up"], voices=["en"], validation_voices=[], speeds=[130], pitches=[35]
    )["train"]
    batch = feature_extractor(list(clips.with_format("numpy")["audio"]), sampling_rate=16000, return_tensors="pt")
    model = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_speech_script_from_config_on_a_saved_dataset(tmp_path):
    """--from_config (random weights) and --train_dir/--validation_dir: saved datasets with string labels."""
    config_dir = tiny_wav2vec2(tmp_path / "model")
    subset = dict(words=["go", "stop"], voices=["en"], validation_voices=["en-us"], speeds=[150], pitches=[40, 60])
    data = spoken_words.spoken_words(tmp_path / "cache", **subset)
    for split in ("train", "validation"):
        data[split].remove_columns("label").rename_columns({"word": "label", "audio": "wave"}).save_to_disk(
            tmp_path / split
        )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("target: {flops: 0.5}\nround_neurons: 4\nschedule: {type: oneshot, start: 1}\n")
    out = tmp_path / "pruned"
    paths = ["--from_config", str(config_dir / "config.json"), "--recipe", str(recipe), "--output_dir", str(out)]
    paths += ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "validation")]
    run_speech_classification.main(
        [*paths, *"--audio_column wave --max_steps 2 --per_device_train_batch_size 2".split()]
    )
    reloaded = hfprune.from_pretrained(out)
    assert reloaded.config.id2label == {0: "go", 1: "stop"}  # string labels, sorted
    dense = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(config_dir))
    assert hfprune.count(reloaded, 49).flops <= 0.5 * hfprune.count(dense, 49).flops
