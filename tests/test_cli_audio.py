"""`hfprune prune` on speech models with audio calibration data: a directory of audio files, a CSV of paths and a
saved dataset with an `Audio` feature, featurized with the model's own feature extractor (resampled, downmixed,
padded), for a tiny wav2vec2 classifier and a tiny Whisper; and the errors bad audio data gets."""

from __future__ import annotations

import importlib
import json
import sys

import datasets
import numpy as np
import pytest
import soundfile
import torch
import transformers
from tiny_models import AUDIO, build

import hfprune
from hfprune.calibration.audio import Clip, audio_batches, audio_clips
from hfprune.cli import main
from hfprune.errors import DataError

RATE = 16_000
RECIPE = "target: {flops: 0.7}\nstructures: [heads, neurons]\ncriterion: fisher\n"
# Whisper as in recipes/whisper-oneshot-fisher.yaml: every attention block keeps a head, no refinement.
WHISPER_RECIPE = RECIPE + "min_heads: 1\nrearrange: false\ntune: false\n"


def tone(seconds: float, rate: int = RATE, frequency: float = 440.0, seed: int = 0, channels: int = 1):
    """A sine with a little noise: `(samples,)`, or `(samples, channels)` for multichannel."""
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * frequency * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    wave = wave.astype(np.float32)
    return wave if channels == 1 else np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1)


def write_clips(directory, n=6):
    """Mixed clips: 16 kHz mono WAV, 22.05 kHz (espeak-ng's rate) and 8 kHz to resample, stereo, and FLAC."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rate = (RATE, 22_050, 8_000)[i % 3]
        suffix = ".flac" if i % 4 == 3 else ".wav"
        path = directory / f"clip{i}{suffix}"
        soundfile.write(path, tone(0.2 + 0.05 * i, rate, 200.0 + 60 * i, seed=i, channels=1 + (i % 2)), rate)
        paths.append(path)
    return paths


def write_recipe(tmp_path, text=RECIPE):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    return recipe


@pytest.fixture
def classifier_dir(tmp_path):
    config = transformers.Wav2Vec2Config(**AUDIO, num_labels=2, classifier_proj_size=16,
                                         id2label={0: "low", 1: "high"}, label2id={"low": 0, "high": 1})
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForSequenceClassification(config).eval()
    directory = tmp_path / "w2v2"
    model.save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True).save_pretrained(directory)
    return directory


@pytest.fixture
def whisper_dir(tmp_path):
    # 1 s windows: 100 mel frames of 8 bins, which the encoder's conv stem halves to its 50 positions.
    model = build("whisper", max_source_positions=50)
    directory = tmp_path / "whisper"
    model.save_pretrained(directory)
    transformers.WhisperFeatureExtractor(feature_size=8, chunk_length=1).save_pretrained(directory)
    return directory


def prune_cli(model_dir, data, out, recipe, *extra):
    return main(["prune", "--model", str(model_dir), "--recipe", str(recipe), "--data", str(data), "--out", str(out),
                 "--batch-size", "4", *extra])


def flops(model, frames=50):
    return hfprune.count(model, seq_len=frames).flops


# ------------------------------------------------------------------------------------------------ batches


def test_batches_are_resampled_downmixed_padded_and_masked(tmp_path):
    paths = write_clips(tmp_path / "clips", n=3)
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True)
    (batch,) = audio_batches(audio_clips(str(tmp_path / "clips")), extractor, "input_values", batch_size=3)
    assert set(batch) == {"input_values", "attention_mask"}, "no labels from a bare directory"
    lengths = batch["attention_mask"].sum(-1).tolist()
    # clip0: 0.2 s at 16 kHz; clip1: 0.25 s of stereo at 22.05 kHz; clip2: 0.3 s at 8 kHz, all now at 16 kHz.
    assert [p.name for p in paths] == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert lengths == pytest.approx([3200, 4000, 4800], abs=1)
    assert batch["input_values"].shape == (3, max(lengths)), "padded to the longest clip of the batch"
    assert batch["input_values"].dtype == torch.float32


def test_saved_dataset_with_audio_feature_and_string_labels(tmp_path):
    paths = write_clips(tmp_path / "clips", n=4)
    saved = tmp_path / "ds"
    rows = {"audio": [str(p) for p in paths], "label": ["low", "high", "high", "low"]}
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).save_to_disk(saved)
    clips = audio_clips(str(saved))
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE)
    batches = audio_batches(clips, extractor, "input_values", batch_size=3, label2id={"low": 0, "high": 1})
    assert [b["labels"].tolist() for b in batches] == [[0, 1, 1], [0]]
    assert "attention_mask" not in batches[0], "only when the extractor returns one"
    assert audio_clips(str(saved), labelled=False)[0].label is None, "a CTC model or Whisper takes no class labels"


# ---------------------------------------------------------------------------------------------- end to end


def test_prune_wav2vec2_classifier_from_a_directory_of_audio_files(classifier_dir, tmp_path, capsys):
    write_clips(tmp_path / "clips")
    out = tmp_path / "pruned"
    assert prune_cli(classifier_dir, tmp_path / "clips", out, write_recipe(tmp_path)) == 0
    assert "saved to" in capsys.readouterr().out
    reloaded = hfprune.from_pretrained(out)
    dense = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(classifier_dir)
    assert flops(reloaded) < flops(dense)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(out)  # saved beside the model
    with torch.no_grad():
        logits = reloaded(**extractor([tone(0.3)], sampling_rate=RATE, return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_prune_wav2vec2_classifier_from_a_csv_of_relative_paths_with_labels(classifier_dir, tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "data" / "clips")
    csv = tmp_path / "data" / "calib.csv"
    csv.write_text("file,label\n" + "".join(f"clips/{p.name},{['low', 'high'][i % 2]}\n" for i, p in enumerate(paths)))
    prune_module = importlib.import_module("hfprune.structured.prune")
    seen, prune = [], prune_module.prune
    monkeypatch.setattr(prune_module, "prune", lambda model, recipe, calibration: seen.extend(calibration) or
                        prune(model, recipe, calibration=calibration))
    out = tmp_path / "pruned"
    assert prune_cli(classifier_dir, csv, out, write_recipe(tmp_path), "--max-duration", "0.2") == 0
    assert [b["labels"].tolist() for b in seen] == [[0, 1, 0, 1], [0, 1]], "string labels through label2id"
    assert all(b["input_values"].shape[-1] == 3200 for b in seen), "cut to --max-duration (0.2 s at 16 kHz)"
    dense = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(classifier_dir)
    assert flops(hfprune.from_pretrained(out)) < flops(dense)


def test_prune_whisper_from_unlabelled_audio(whisper_dir, tmp_path):
    write_clips(tmp_path / "clips", n=4)
    out = tmp_path / "pruned"
    assert prune_cli(whisper_dir, tmp_path / "clips", out, write_recipe(tmp_path, WHISPER_RECIPE)) == 0
    reloaded = hfprune.from_pretrained(out)
    dense = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_dir)
    assert hfprune.count(reloaded, seq_len=8, encoder_seq_len=50).flops < hfprune.count(
        dense, seq_len=8, encoder_seq_len=50).flops
    extractor = transformers.AutoFeatureExtractor.from_pretrained(out)
    features = extractor([tone(0.5)], sampling_rate=RATE, return_tensors="pt").input_features
    assert features.shape == (1, 8, 100)
    with torch.no_grad():
        tokens = reloaded.generate(input_features=features, max_new_tokens=4)
    assert tokens.shape[0] == 1
    assert not (out / "tokenizer_config.json").exists(), "no made-up tokenizer when the model has none"


def test_prune_wav2vec2_ctc_from_a_saved_dataset_keeps_its_tokenizer(tmp_path):
    model_dir = tmp_path / "ctc"
    build("wav2vec2").save_pretrained(model_dir)  # vocab_size 12
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE).save_pretrained(model_dir)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({c: i for i, c in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefg"])}))
    transformers.Wav2Vec2CTCTokenizer(str(vocab)).save_pretrained(model_dir)
    saved = tmp_path / "ds"
    rows = {"audio": [str(p) for p in write_clips(tmp_path / "clips", n=4)], "text": ["a", "b", "c", "d"]}
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).save_to_disk(saved)
    out = tmp_path / "pruned"
    assert prune_cli(model_dir, saved, out, write_recipe(tmp_path)) == 0  # unlabelled: the model's own predictions
    assert flops(hfprune.from_pretrained(out)) < flops(transformers.Wav2Vec2ForCTC.from_pretrained(model_dir))
    assert transformers.AutoTokenizer.from_pretrained(out).get_vocab() == json.loads(vocab.read_text())


# -------------------------------------------------------------------------------------------------- errors


def run_error(model_dir, data, tmp_path, capsys, *extra):
    code = prune_cli(model_dir, data, tmp_path / "out", write_recipe(tmp_path), *extra)
    assert code == 2 and not (tmp_path / "out").exists()
    return capsys.readouterr().err


def test_directory_without_audio_files(classifier_dir, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here")
    err = run_error(classifier_dir, tmp_path / "notes", tmp_path, capsys)
    assert "has no audio files" in err and "notes" in err


def test_corrupt_audio_file_is_named(classifier_dir, tmp_path, capsys):
    write_clips(tmp_path / "clips", n=2)
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    err = run_error(classifier_dir, tmp_path / "clips", tmp_path, capsys)
    assert "broken.wav" in err and "cannot read the audio" in err


def test_empty_audio_file_is_named(classifier_dir, tmp_path, capsys):
    write_clips(tmp_path / "clips", n=2)
    soundfile.write(tmp_path / "clips" / "silent.wav", np.zeros(0, dtype=np.float32), RATE)
    err = run_error(classifier_dir, tmp_path / "clips", tmp_path, capsys)
    assert "silent.wav" in err and "empty" in err


def test_model_without_feature_extractor(tmp_path, capsys):
    model_dir = tmp_path / "bare"
    build("wav2vec2").save_pretrained(model_dir)  # no preprocessor_config.json
    write_clips(tmp_path / "clips", n=2)
    err = run_error(model_dir, tmp_path / "clips", tmp_path, capsys)
    assert "has no feature extractor config" in err and "preprocessor_config.json" in err


def test_missing_audio_column_and_label_column_for_ctc(tmp_path, capsys):
    model_dir = tmp_path / "ctc"
    build("wav2vec2").save_pretrained(model_dir)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE).save_pretrained(model_dir)
    csv = tmp_path / "calib.csv"
    csv.write_text("text,label\nhello,0\n")
    assert "which column holds the audio" in run_error(model_dir, csv, tmp_path, capsys)
    err = run_error(model_dir, csv, tmp_path, capsys, "--audio-column", "text", "--label-column", "label")
    assert "not an audio classifier" in err


def test_raw_samples_without_a_rate_and_unlabelled_rows(tmp_path):
    raw = tmp_path / "raw"
    datasets.Dataset.from_dict({"audio": [tone(0.1).tolist()]}).save_to_disk(raw)
    with pytest.raises(DataError, match="row 0 of 'audio' is a list, not a file path"):
        audio_clips(str(raw))
    paths = write_clips(tmp_path / "clips", n=2)
    partly = tmp_path / "partly"
    datasets.Dataset.from_dict({"audio": [str(p) for p in paths], "label": [1, None]}).save_to_disk(partly)
    with pytest.raises(DataError, match="row 1 has no 'label'"):
        audio_clips(str(partly))


def test_resampling_without_torchaudio_or_scipy_names_the_rates(monkeypatch):
    # None in sys.modules makes `import` raise ImportError, as if neither were installed.
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    monkeypatch.setitem(sys.modules, "scipy.signal", None)
    clip = Clip(source={"array": tone(0.1, 22_050), "sampling_rate": 22_050}, name="row 0")
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE)
    with pytest.raises(DataError, match="sampled at 22050 Hz but the model's feature extractor expects 16000 Hz"):
        audio_batches([clip], extractor, "input_values")
