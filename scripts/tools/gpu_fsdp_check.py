"""Check on a GPU what CPU tests can only stand in for: `accelerate launch` with the shipped FSDP2 config really
shards the model (accelerate applies FSDP on accelerators only), and `PruningCallback` + distillation under it end
with the same pruned model as the same run without FSDP.

A tiny Llama (GQA) and a word-level tokenizer are built from configs, trained on the repository's own Markdown
with `scripts/examples/run_causal_lm.py` twice, same seed and global batch: plainly on one GPU, then through
`accelerate launch` with `scripts/examples/accelerate_fsdp2.yaml` (1 process: one GPU). Both checkpoints are
reloaded with `hfprune.from_pretrained` and compared: kept heads and neurons per layer, logits. Needs one CUDA GPU.

    python scripts/tools/gpu_fsdp_check.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
import yaml

import hfprune

ROOT = Path(__file__).resolve().parents[2]
RECIPE = {
    "target": {"nonembedding_params": 0.6}, "structures": ["heads", "neurons"], "criterion": "fisher",
    "gqa": "heads", "round_neurons": 8, "schedule": {"type": "cubic", "start": 0.1, "end": 0.6, "every": 5},
    "distill": {"alpha": 0.5, "temperature": 2.0},
}


def build(work: Path) -> Path:
    """A seeded tiny Llama with a word-level tokenizer trained on the repository's Markdown, and that text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = [line.strip() for md in sorted(ROOT.glob("**/*.md")) if ".venv" not in md.parts
             for line in md.read_text(errors="ignore").splitlines() if len(line.split()) > 3]
    (work / "train.txt").write_text("\n".join(lines))
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(lines, trainers.WordLevelTrainer(vocab_size=4000, special_tokens=["[UNK]", "[EOS]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[EOS]")
    model_dir = work / "dense"
    fast.save_pretrained(model_dir)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=256, intermediate_size=688,
                                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                      max_position_embeddings=256, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    (work / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    fsdp = yaml.safe_load((ROOT / "scripts/examples/accelerate_fsdp2.yaml").read_text())
    fsdp["num_processes"] = max(1, torch.cuda.device_count())
    fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] = "LlamaDecoderLayer"
    (work / "fsdp.yaml").write_text(yaml.safe_dump(fsdp))
    return model_dir


def train(work: Path, model_dir: Path, name: str, launcher: list[str]) -> dict:
    out = work / name
    per_device = 8 // max(1, torch.cuda.device_count()) if name == "fsdp" else 8
    # The script runs with hfprune's info messages shown: the callback says there when it found the model sharded.
    wrapper = work / "run_causal_lm_logged.py"
    wrapper.write_text("import logging, runpy\nlogging.basicConfig(level=logging.WARNING)\n"
                       "logging.getLogger('hfprune').setLevel(logging.INFO)\n"
                       f"runpy.run_path({str(ROOT / 'scripts/examples/run_causal_lm.py')!r}, run_name='__main__')\n")
    command = [*launcher, str(wrapper), "--model", str(model_dir),
               "--recipe", str(work / "recipe.yaml"), "--train_file", str(work / "train.txt"),
               "--output_dir", str(out), "--max_steps", "40", "--block_size", "64",
               "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-3"]
    start = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    log = done.stdout + done.stderr
    (work / f"{name}.log").write_text(log)
    print(f"{name}: exit {done.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
    if done.returncode:
        print(log[-4000:])
    return {"returncode": done.returncode, "seconds": time.perf_counter() - start,
            "not_sharded_warning": "not sharded" in log,
            "sharded_by_fsdp2": "sharded by FSDP2" in log, "out": out}


def kept(model) -> dict:
    return {name: site.units for name, site in hfprune.count(model, seq_len=64).sites.items()}


def main(out_dir: str) -> None:
    work = Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build(work)
    runs = {
        "plain": train(work, model_dir, "plain", [sys.executable]),
        "fsdp": train(work, model_dir, "fsdp", [sys.executable, "-m", "accelerate.commands.launch",
                                                 "--config_file", str(work / "fsdp.yaml")]),
    }
    result = {name: {k: v for k, v in run.items() if k != "out"} for name, run in runs.items()}
    if not any(run["returncode"] for run in runs.values()):
        plain, fsdp = (hfprune.from_pretrained(runs[n]["out"]) for n in ("plain", "fsdp"))
        ids = torch.randint(0, plain.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            a, b = plain(ids).logits, fsdp(ids).logits
        result.update(versions={"torch": torch.__version__, "transformers": transformers.__version__,
                                "gpus": torch.cuda.device_count()},
                      same_units=kept(plain) == kept(fsdp), kept_plain=kept(plain), kept_fsdp=kept(fsdp),
                      max_logit_diff=float((a - b).abs().max()), logit_scale=float(a.abs().max()))
    print(json.dumps(result, indent=1))
    (work / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
