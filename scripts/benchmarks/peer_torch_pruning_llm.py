"""Peer baseline for the LLM benchmark: Torch-Pruning (DepGraph) on a Llama-family causal LM, uniform per layer.

Usage::

    from scripts.benchmarks.peer_torch_pruning_llm import prune_llm_uniform
    model = AutoModelForCausalLM.from_pretrained("out/smollm2-135m")
    info = prune_llm_uniform(model, 0.80, tokenizer("Hello world.", return_tensors="pt").input_ids)
    model.generate(...)  # the model is pruned in place and runs in transformers 5

    python -m scripts.benchmarks.peer_torch_pruning_llm [--model out/smollm2-135m] [--keep 0.80 0.65]

What it does
------------
`prune_llm_uniform` removes query heads and FFN (MLP intermediate) channels from every decoder layer of a
`LlamaForCausalLM` (Qwen2, with its q/k/v biases, and Mistral go the same way; checked on tiny random models) with
Torch-Pruning's public API, the way its LLM example does (`examples/LLMs/prune_llm.py` in VainF/Torch-Pruning,
checked against Torch-Pruning 1.6.1):

* `tp.pruner.BasePruner`, `tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")`,
  `global_pruning=False` (local: the same share of every layer), `round_to=4`, `ignored_layers=[lm_head, ...]`,
  `output_transform=lambda out: out.logits`;
* `num_heads` on q_proj (`num_attention_heads`) and on k_proj / v_proj (`num_key_value_heads`),
  `prune_num_heads=True`, `prune_head_dims=False` (whole heads only, so RoPE needs no pruning),
  `head_pruning_ratio` equal to the width `pruning_ratio`;
* afterwards the module attributes and the config are fixed as the example does: `self_attn.num_heads`,
  `num_key_value_heads`, `num_key_value_groups`, `config.num_attention_heads`, `config.num_key_value_heads`,
  `config.intermediate_size` (plus `config.head_dim` and `mlp.intermediate_size`). transformers 5's attention
  reshapes with `-1` and `self.head_dim` and repeats K/V `num_key_value_groups` times, so that attribute is the one
  the forward pass reads; with `config.head_dim` explicit, `save_pretrained` / `from_pretrained` round-trip.

Unlike the example, the hidden size (residual width) is kept: the token embedding, `lm_head`, `o_proj` and
`down_proj` are in `ignored_layers`, so only groups rooted at q/k/v (attention heads) and gate/up (FFN channels) can
be pruned (Torch-Pruning drops a group when it would prune the outputs of an ignored layer).

GQA: what Torch-Pruning does, and what breaks (Torch-Pruning 1.6.1, transformers 5.24, torch 2.13)
----------------------------------------------------------------------------------------------------
Torch-Pruning keeps every K/V head and removes the same number of query heads from each K/V group: it ranks the
query heads inside each group and removes `ceil(ceil(ratio * num_heads) / num_key_value_heads)` per group (it blanks
the K/V part of the attention group). SmolLM2-135M (9 query heads, 3 K/V heads): any ratio in (0, 1/3] leaves
6 query heads (2 per group), so head pruning is coarse. Used as the example uses it, it breaks three ways here:

1. Infinite loop while grouping. `DependencyGraph.get_pruning_group` never returns for the q_proj group (the
   `BasePruner` constructor hangs in `get_all_groups`), with or without GQA, SDPA or eager: the traced RoPE
   (`rotate_half`: two slices and a `torch.cat` inside `q * cos + rotate_half(q) * sin`) forms a cycle on which the
   concat's index mapping shifts the indices by the concat offset on every lap, so the visited check never matches.
   Workaround: while the graph is traced, the modeling module's `apply_rotary_pos_emb` is replaced by the identity.
   RoPE has no parameters and acts inside a head, and head dims are not pruned, so it doesn't change the groups.
2. GQA with SDPA. transformers 5 calls SDPA with fewer K/V heads than query heads (no `repeat_kv` in the graph);
   Torch-Pruning treats SDPA as element-wise, the attention group gets rooted at v_proj with the K/V width, and
   pruning fails with `RuntimeError: shape '[9, -1]' is invalid for input of size 192` (`imp.view(ch_groups, -1)`;
   the same error as Torch-Pruning issue #516 on Llama-3.2-3B). Workaround: trace with `attn_implementation="eager"`
   (its `repeat_kv` expand maps query channels onto K/V channels); the model's own implementation is restored.
3. One query head per K/V group. Torch-Pruning decides whether the group is GQA *after* it has subtracted the pruned
   heads, so when the query heads left equal the K/V heads (9 -> 3 on SmolLM2, 4 -> 2 on a 4/2 model) it prunes the
   K/V layers with the query indices, `check_pruning_group` rejects the group, and the heads are silently left
   unpruned (only the FFN shrinks). This peer never asks for such a ratio: the head ratio is capped at the largest
   one Torch-Pruning applies (at least 2 query heads per K/V group; at least 1 head without GQA).

Matching a parameter budget
---------------------------
The target is a fraction of the non-embedding parameters (all parameters except the token embedding and the LM head).
The kept shapes are a step function of the ratio (whole heads by Torch-Pruning's rounding above; FFN width
`int(F * (1 - ratio))` rounded down to a multiple of 4), so the ratio is found by bisection on that count, which is
cheap, and the real prune is checked against it (an error if Torch-Pruning kept other shapes). Heads and FFN get the
same ratio, as in the example, when that lands within `SAME_RATIO_TOLERANCE` of the target. When a whole-head step
jumps over the target (SmolLM2 at 0.65: one ratio gives 0.688 with 6 heads or 0.625 with 3, and 3 is case 3 above
anyway), the head ratio stays at the largest ratio that does not undershoot and the FFN ratio alone is solved for the
target (`pruning_ratio` != `head_pruning_ratio`; both are reported).

The pruned model saves and reloads with `from_pretrained` when `hidden_size` is a multiple of the heads left
(transformers 5's `LlamaConfig` checks that; SmolLM2's 576 with 6 heads is). No retraining is done here.

Measured on SmolLM2-135M-Instruct (`out/smollm2-135m`; 30 layers, 9 query / 3 K/V heads of 64, FFN 1536; perplexity
on 16 Python-docs evaluation windows of 512 tokens; 2 CPU cores, about 15 s to prune of which 5 s tracing): dense
21.2; keep 0.80 -> ratio 0.1823 for heads and FFN, 6 heads / 3 K/V, FFN 1256, fraction 0.8008, perplexity 7.1e5;
keep 0.65 -> head ratio 0.3333, FFN ratio 0.3828, 6 heads / 3 K/V, FFN 948, fraction 0.6505, perplexity 8.6e5.
The slicing is exact (the pruned model equals the dense one with those heads / channels zeroed); the damage is the
magnitude criterion's: it drops FFN channels that matter a lot in layer 0 (pruning only layer 0's FFN at 0.18 takes
perplexity from 23 to 909) and in the last two layers.

Torch-Pruning is an optional, benchmark-only dependency (`pip install torch-pruning==1.6.1`). This module uses no
hfprune code.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings

import torch
import torch.nn as nn

ROUND_TO = 4  # as in Torch-Pruning's LLM example
SAME_RATIO_TOLERANCE = 0.005  # one ratio for heads and FFN when it lands this close to the target fraction


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Llama-style decoder layers (self_attn + mlp)")
    for layer in layers:
        a, f = layer.self_attn, layer.mlp
        if not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            raise ValueError(f"{type(a).__name__} is not a Llama-style attention (separate q/k/v/o projections)")
        if not all(hasattr(f, n) for n in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"{type(f).__name__} is not a gated MLP (gate/up/down projections)")
    return layers


def _embedding_params(model: nn.Module) -> set[int]:
    ids = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            ids.update(id(p) for p in module.parameters())
    return ids


def nonembedding_params(model: nn.Module) -> int:
    """Parameters other than the token embedding and the LM head (tied or not), each tensor counted once."""
    skip = _embedding_params(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _rows(linear: nn.Linear) -> int:
    """Parameters per output channel of a linear layer (weight row and bias)."""
    return linear.in_features + (linear.bias is not None)


class _Shape:
    """The dense per-layer shape and what one head / one FFN channel costs, for the count."""

    def __init__(self, model: nn.Module, layers: list[nn.Module]):
        a, f = layers[0].self_attn, layers[0].mlp
        self.layers = len(layers)
        self.head_dim = a.head_dim
        self.heads = a.q_proj.out_features // a.head_dim
        self.kv_heads = a.k_proj.out_features // a.head_dim
        self.ffn = f.gate_proj.out_features
        for layer in layers:
            la, lf = layer.self_attn, layer.mlp
            shape = (la.q_proj.out_features, la.k_proj.out_features, la.v_proj.out_features, lf.gate_proj.out_features)
            if shape != (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features, self.ffn):
                raise ValueError("expected a dense model with the same shapes in every layer")
        if self.heads * self.head_dim != a.q_proj.out_features or self.heads % self.kv_heads:
            raise ValueError(f"unexpected attention shape: q {a.q_proj.out_features}, k {a.k_proj.out_features}, "
                             f"head_dim {a.head_dim}")
        self.gqa = self.heads != self.kv_heads
        # A query head: head_dim rows of q_proj and head_dim columns of o_proj; without GQA the K/V head goes too.
        self.per_head = self.head_dim * (_rows(a.q_proj) + a.o_proj.out_features)
        if not self.gqa:
            self.per_head += self.head_dim * (_rows(a.k_proj) + _rows(a.v_proj))
        self.per_channel = _rows(f.gate_proj) + _rows(f.up_proj) + f.down_proj.out_features
        self.dense = nonembedding_params(model)

    def kept_heads(self, ratio: float) -> int:
        """Query heads Torch-Pruning 1.6.1 keeps per layer (local pruning, BasePruner._prune)."""
        if ratio <= 0:
            return self.heads
        removed = math.ceil(ratio * self.heads)
        if self.gqa:  # the same number from each K/V group, rounded up
            removed = math.ceil(removed / self.kv_heads) * self.kv_heads
        return self.heads - removed

    def kept_ffn(self, ratio: float) -> int:
        """FFN channels Torch-Pruning keeps per layer: int(F * (1 - ratio)) rounded down to a multiple of ROUND_TO."""
        kept = int(self.ffn * (1 - ratio))
        if kept >= self.ffn:
            return self.ffn
        return kept - kept % ROUND_TO

    def heads_prunable(self, ratio: float) -> bool:
        """Whether Torch-Pruning really applies this head ratio (see the module docstring, case 3)."""
        kept = self.kept_heads(ratio)
        return kept > self.kv_heads if self.gqa else kept >= 1

    def params(self, head_ratio: float, ffn_ratio: float) -> int:
        heads, ffn = self.kept_heads(head_ratio), self.kept_ffn(ffn_ratio)
        return self.dense - self.layers * ((self.heads - heads) * self.per_head + (self.ffn - ffn) * self.per_channel)

    def fraction(self, head_ratio: float, ffn_ratio: float) -> float:
        return self.params(head_ratio, ffn_ratio) / self.dense


_STEP = 1e-9  # past a bisection's last ratio: the next kept shape (shapes change at steps of 1/F or 1/heads)


def _sup(predicate, lo: float = 0.0, hi: float = 1.0, steps: int = 60) -> float:
    """The largest x in [lo, hi] with predicate(x), for a predicate true up to a point and false after it."""
    if predicate(hi):
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predicate(mid) else (lo, mid)
    return lo


def plan(shape: _Shape, keep: float) -> tuple[float, float]:
    """(head_ratio, ffn_ratio) for a target fraction `keep` of the non-embedding parameters."""
    if keep >= 1.0:
        return 0.0, 0.0
    max_ffn_ratio = 1.0 - (ROUND_TO + 0.5) / shape.ffn  # keep at least ROUND_TO channels
    max_head_ratio = _sup(shape.heads_prunable, hi=max_ffn_ratio)

    def closest(fraction, last: float, limit: float) -> float:
        # `last` keeps at least `keep`; just past it comes the next shape, which keeps less. Take the nearer.
        candidates = [last] + ([last + _STEP] if last + _STEP <= limit else [])
        return min(candidates, key=lambda r: abs(fraction(r) - keep))

    # Same ratio for heads and FFN, as in the example.
    same = _sup(lambda r: shape.fraction(r, r) >= keep, hi=max_head_ratio)
    best = closest(lambda r: shape.fraction(r, r), same, max_head_ratio)
    if abs(shape.fraction(best, best) - keep) <= SAME_RATIO_TOLERANCE:
        return best, best
    # A whole-head step jumps over the target: heads at `same`, the FFN ratio alone meets the target.
    ffn = _sup(lambda r: shape.fraction(same, r) >= keep, lo=same, hi=max_ffn_ratio)
    ffn = closest(lambda r: shape.fraction(same, r), ffn, max_ffn_ratio)
    if (shape.kept_heads(same), shape.kept_ffn(ffn)) == (shape.kept_heads(best), shape.kept_ffn(best)):
        return best, best  # nothing closer than the same ratio after all (coarse FFN steps in a small model)
    return same, ffn


def _identity_rope(q, k, *args, **kwargs):
    return q, k


@contextlib.contextmanager
def _traceable(model: nn.Module, layers: list[nn.Module]):
    """Hide RoPE and use eager attention while Torch-Pruning traces the model (module docstring, cases 1 and 2)."""
    modules = {sys.modules[type(layer.self_attn).__module__] for layer in layers}
    missing = [m.__name__ for m in modules if not hasattr(m, "apply_rotary_pos_emb")]
    if missing:
        raise ValueError(f"{missing} define no apply_rotary_pos_emb to hide from the tracer; Torch-Pruning would "
                         "loop forever on the RoPE graph")
    saved = {m: m.apply_rotary_pos_emb for m in modules}
    implementation = model.config._attn_implementation
    try:
        for m in modules:
            m.apply_rotary_pos_emb = _identity_rope
        if implementation != "eager":
            model.set_attn_implementation("eager")
        yield
    finally:
        for m, function in saved.items():
            m.apply_rotary_pos_emb = function
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)


def _fix_attributes(model: nn.Module, layers: list[nn.Module], head_dim: int) -> None:
    """What Torch-Pruning leaves to the user (as the example does): head counts and widths in modules and config."""
    heads = {layer.self_attn.q_proj.out_features // head_dim for layer in layers}
    kv_heads = {layer.self_attn.k_proj.out_features // head_dim for layer in layers}
    widths = {layer.mlp.gate_proj.out_features for layer in layers}
    if len(heads) != 1 or len(kv_heads) != 1 or len(widths) != 1:
        raise RuntimeError(f"Torch-Pruning left non-uniform layers: heads {heads}, K/V heads {kv_heads}, FFN {widths}")
    (heads,), (kv_heads,), (width,) = heads, kv_heads, widths
    for layer in layers:
        attention = layer.self_attn
        attention.num_heads = heads
        attention.num_key_value_heads = kv_heads
        attention.num_key_value_groups = heads // kv_heads  # what transformers 5's attention reads
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = width
    config = model.config
    config.head_dim = head_dim  # explicit, so hidden_size // num_attention_heads is not used on reload
    config.num_attention_heads = heads
    config.num_key_value_heads = kv_heads
    config.intermediate_size = width


def prune_llm_uniform(model: nn.Module, keep_nonembedding_params: float, example_input_ids: torch.Tensor) -> dict:
    """Prune query heads and FFN channels of a Llama-family causal LM IN PLACE with Torch-Pruning, uniformly per layer.

    Args:
        model: a dense `LlamaForCausalLM` (or Qwen2 / Mistral) with the same shapes in every layer.
        keep_nonembedding_params: target share of the non-embedding parameters to keep, in (0, 1].
        example_input_ids: `(batch, seq)` token ids for Torch-Pruning's trace (any few tokens).

    Returns:
        A dict: `ratio` (Torch-Pruning's `head_pruning_ratio`), `ffn_ratio` (its `pruning_ratio`, which sets the FFN
        width), `same_ratio`, `target`, `fraction` (kept share of the non-embedding parameters), `params` /
        `dense_params` (non-embedding), `heads` / `kv_heads` / `ffn` (kept per layer), `pruned_heads` (original
        indices of the query heads removed, per layer), `wall_s`, `trace_s`, `prune_s`.
    """
    import torch_pruning as tp  # optional dependency, only for this benchmark

    if not 0.0 < keep_nonembedding_params <= 1.0:
        raise ValueError(f"keep_nonembedding_params must be in (0, 1], got {keep_nonembedding_params}")
    start = time.perf_counter()
    layers = _decoder_layers(model)
    shape = _Shape(model, layers)
    head_ratio, ffn_ratio = plan(shape, keep_nonembedding_params)
    head_dim = shape.head_dim
    device = next(model.parameters()).device
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}

    trace_s = prune_s = 0.0
    history = []
    if head_ratio > 0 or ffn_ratio > 0:
        num_heads = {}
        roots = set()
        for layer in layers:
            a = layer.self_attn
            num_heads[a.q_proj] = shape.heads
            num_heads[a.k_proj] = shape.kv_heads
            num_heads[a.v_proj] = shape.kv_heads
            roots.update((a.q_proj, a.k_proj, a.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj))
        # Everything else keeps its outputs: o_proj, down_proj, lm_head (and the embedding) hold the hidden size.
        ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in roots]
        ignored.append(model.get_input_embeddings())
        example = {"input_ids": example_input_ids.to(device), "use_cache": False}
        try:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(True)
            with torch.enable_grad(), _traceable(model, layers), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # the RMSNorm weights
                pruner = tp.pruner.BasePruner(
                    model,
                    example_inputs=example,
                    importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
                    global_pruning=False,
                    output_transform=lambda out: out.logits,
                    pruning_ratio=ffn_ratio,
                    ignored_layers=ignored,
                    num_heads=num_heads,
                    prune_num_heads=True,
                    prune_head_dims=False,  # whole heads: RoPE dims stay aligned
                    head_pruning_ratio=head_ratio,
                    round_to=ROUND_TO,
                    # Fresh dicts: Torch-Pruning mutates these defaults (mutable default arguments).
                    in_channel_groups={},
                    out_channel_groups={},
                    channel_groups={},
                )
            traced = time.perf_counter()
            trace_s = traced - start
            with torch.no_grad():
                for group in pruner.step(interactive=True):
                    group.prune()
            prune_s = time.perf_counter() - traced
            history = pruner.pruning_history()
            del pruner
        finally:
            for name, p in model.named_parameters():  # pruned layers get new Parameters with requires_grad=True
                p.requires_grad_(requires_grad.get(name, True))
            model.train(was_training)

    _fix_attributes(model, layers, head_dim)

    # Removed query heads, from the history: Torch-Pruning re-roots attention groups at o_proj's inputs.
    names = {m: name for name, m in model.named_modules()}
    layer_of = {names[layer.self_attn.o_proj]: i for i, layer in enumerate(layers)}
    layer_of.update({names[layer.self_attn.q_proj]: i for i, layer in enumerate(layers)})
    pruned_heads: dict[int, list[int]] = {i: [] for i in range(len(layers))}
    for module_name, _, indices in history:
        if module_name in layer_of:
            pruned_heads[layer_of[module_name]] = sorted({int(i) // head_dim for i in indices})

    heads = [layer.self_attn.q_proj.out_features // head_dim for layer in layers]
    kv_heads = [layer.self_attn.k_proj.out_features // head_dim for layer in layers]
    ffn = [layer.mlp.gate_proj.out_features for layer in layers]
    expected = (shape.kept_heads(head_ratio), shape.kv_heads if shape.gqa else shape.kept_heads(head_ratio),
                shape.kept_ffn(ffn_ratio))
    if (set(heads), set(kv_heads), set(ffn)) != ({expected[0]}, {expected[1]}, {expected[2]}):
        raise RuntimeError(f"Torch-Pruning kept heads {sorted(set(heads))}, K/V heads {sorted(set(kv_heads))}, FFN "
                           f"{sorted(set(ffn))}; the plan was {expected} (another Torch-Pruning version?)")
    group_size = shape.heads // shape.kv_heads
    for i, removed in pruned_heads.items():
        per_group = [sum(h // group_size == g for h in removed) for g in range(shape.kv_heads)]
        if len(removed) != shape.heads - heads[i] or (shape.gqa and len(set(per_group)) > 1):
            raise RuntimeError(f"layer {i}: query heads removed {removed}, not the same number per K/V group")

    params, planned = nonembedding_params(model), shape.params(head_ratio, ffn_ratio)
    if params != planned:
        raise RuntimeError(f"{params} non-embedding parameters left; the plan was {planned}")
    return {
        "ratio": head_ratio,
        "ffn_ratio": ffn_ratio,
        "same_ratio": head_ratio == ffn_ratio,
        "target": keep_nonembedding_params,
        "fraction": params / shape.dense,
        "params": params,
        "dense_params": shape.dense,
        "heads": heads,
        "kv_heads": kv_heads,
        "ffn": ffn,
        "pruned_heads": pruned_heads,
        "wall_s": time.perf_counter() - start,
        "trace_s": trace_s,
        "prune_s": prune_s,
    }


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """exp of the mean over windows of `model(ids, labels=ids).loss` (equal-length windows: the mean token NLL)."""
    model.eval()
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    return math.exp(sum(losses) / len(losses))


def main() -> None:
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scripts.benchmarks import python_docs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="out/smollm2-135m")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.80, 0.65])
    parser.add_argument("--windows", type=int, default=16, help="evaluation windows of 512 tokens for perplexity")
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dense = AutoModelForCausalLM.from_pretrained(args.model).eval()
    windows = python_docs.windows(tokenizer, "evaluation", 512, args.windows)
    example = tokenizer("Hello world.", return_tensors="pt").input_ids
    prompt = tokenizer("The Python tutorial explains", return_tensors="pt")
    print(f"dense: {nonembedding_params(dense):,} non-embedding params, perplexity {perplexity(dense, windows):.2f}")
    for keep in args.keep:
        model = copy.deepcopy(dense)
        info = prune_llm_uniform(model, keep, example)
        with torch.no_grad():
            logits = model(input_ids=torch.randint(0, tokenizer.vocab_size, (1, 32))).logits
            out = model.generate(**prompt, max_new_tokens=10, do_sample=False)
        assert logits.shape[:2] == (1, 32) and torch.isfinite(logits).all()
        print(f"keep {keep:.2f}: fraction {info['fraction']:.4f}, head ratio {info['ratio']:.4f}, FFN ratio "
              f"{info['ffn_ratio']:.4f}, heads {info['heads'][0]}/{info['kv_heads'][0]} KV, FFN {info['ffn'][0]}, "
              f"{info['params']:,} params, prune {info['wall_s']:.1f} s (trace {info['trace_s']:.1f} s), "
              f"perplexity {perplexity(model, windows):.2f}")
        print(f"  pruned heads per layer: {info['pruned_heads']}")
        print(f"  generate: {tokenizer.decode(out[0, prompt.input_ids.shape[1]:])!r}")


if __name__ == "__main__":
    main()
