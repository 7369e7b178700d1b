"""scripts/benchmarks/peer_torch_pruning_llm.py: the Torch-Pruning LLM peer prunes a tiny random Llama to a share of
its non-embedding parameters, and the pruned model still runs forward and `generate()`.

Skipped when the optional `torch_pruning` package is not installed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

pytest.importorskip("torch_pruning")

from scripts.benchmarks import peer_torch_pruning_llm as peer  # noqa: E402


def tiny_llama(heads: int, kv_heads: int, hidden: int, ffn: int = 128) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16,
                                      intermediate_size=ffn, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def example_ids() -> torch.Tensor:
    return torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def gqa_pruned():
    """6 query heads in 2 K/V groups (SmolLM2 has 9 in 3): Torch-Pruning can take one query head per group."""
    dense = tiny_llama(heads=6, kv_heads=2, hidden=96, ffn=192)
    model = copy.deepcopy(dense)
    return dense, model, peer.prune_llm_uniform(model, 0.7, example_ids())


def test_prunes_the_suggested_tiny_llama_to_the_target_and_it_still_generates():
    model = tiny_llama(heads=4, kv_heads=2, hidden=64)
    dense_params = peer.nonembedding_params(model)
    embedding = model.get_input_embeddings().weight.shape
    info = peer.prune_llm_uniform(model, 0.7, example_ids())

    assert abs(info["fraction"] - 0.7) <= 0.01
    assert info["params"] == peer.nonembedding_params(model) and info["dense_params"] == dense_params
    # 4 query heads in 2 groups: one head per group left is what Torch-Pruning can't do (it silently skips the
    # group), so the heads stay and the FFN takes the whole cut.
    assert info["heads"] == [4, 4] and info["kv_heads"] == [2, 2] and info["ratio"] == 0.0
    assert info["ffn"] == [72, 72] and model.config.intermediate_size == 72
    assert model.get_input_embeddings().weight.shape == embedding  # hidden size and vocabulary untouched
    assert model.config._attn_implementation == "sdpa" and not model.training
    with torch.no_grad():
        assert model(torch.randint(0, 100, (1, 12))).logits.shape == (1, 12, 100)
        assert model.generate(torch.randint(0, 100, (1, 5)), max_new_tokens=6, do_sample=False).shape == (1, 11)


def test_gqa_prunes_the_same_number_of_query_heads_from_every_kv_group(gqa_pruned):
    _, model, info = gqa_pruned
    assert abs(info["fraction"] - 0.7) <= 0.01
    assert info["heads"] == [4, 4] and info["kv_heads"] == [2, 2]
    for removed in info["pruned_heads"].values():
        assert sorted(h // 3 for h in removed) == [0, 1]  # one of heads 0-2 (K/V head 0), one of 3-5 (K/V head 1)
    attention = model.model.layers[0].self_attn
    assert (attention.num_key_value_groups, model.config.num_attention_heads, model.config.num_key_value_heads) == \
        (2, 4, 2)
    assert (attention.q_proj.out_features, attention.k_proj.out_features, attention.o_proj.in_features) == \
        (64, 32, 64)
    assert (attention.o_proj.out_features, model.model.layers[0].mlp.down_proj.out_features) == (96, 96)
    with torch.no_grad():
        out = model.generate(torch.randint(0, 100, (1, 5)), max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 11)


@torch.no_grad()
def test_pruned_model_equals_the_dense_one_with_those_heads_and_channels_zeroed(gqa_pruned):
    dense, model, info = gqa_pruned
    masked = copy.deepcopy(dense)
    for i, (m_layer, p_layer) in enumerate(zip(masked.model.layers, model.model.layers, strict=True)):
        for h in info["pruned_heads"][i]:
            m_layer.self_attn.o_proj.weight[:, h * 16:(h + 1) * 16] = 0
        dense_rows, kept_rows = m_layer.mlp.up_proj.weight, p_layer.mlp.up_proj.weight
        drop = torch.ones(dense_rows.shape[0], dtype=torch.bool)
        drop[torch.cdist(kept_rows, dense_rows).argmin(dim=1)] = False
        m_layer.mlp.down_proj.weight[:, drop] = 0
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(2))
    assert (masked(ids).logits - model(ids).logits).abs().max().item() < 1e-4


def test_the_pruned_model_reloads_with_transformers(gqa_pruned, tmp_path):
    _, model, _ = gqa_pruned
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)


def test_tracing_workarounds_are_undone():
    import transformers.models.llama.modeling_llama as modeling

    rope = modeling.apply_rotary_pos_emb
    model = tiny_llama(heads=4, kv_heads=4, hidden=64)  # no GQA: K/V heads go with their query heads
    info = peer.prune_llm_uniform(model, 0.75, example_ids())
    assert modeling.apply_rotary_pos_emb is rope and model.config._attn_implementation == "sdpa"
    assert info["heads"] == info["kv_heads"] and info["heads"][0] < 4
    assert all(p.requires_grad for p in model.parameters())


def test_plan_for_smollm2_shapes_splits_the_ratio_where_a_head_step_jumps_over_the_target():
    config = transformers.LlamaConfig(vocab_size=8, hidden_size=576, num_hidden_layers=1, num_attention_heads=9,
                                      num_key_value_heads=3, head_dim=64, intermediate_size=1536)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    shape = peer._Shape(model, peer._decoder_layers(model))
    head_ratio, ffn_ratio = peer.plan(shape, 0.80)
    assert head_ratio == ffn_ratio and (shape.kept_heads(head_ratio), shape.kept_ffn(ffn_ratio)) == (6, 1256)
    head_ratio, ffn_ratio = peer.plan(shape, 0.65)  # one ratio gives 6 heads (0.69) or 3 (0.63, and unprunable)
    assert head_ratio < ffn_ratio and (shape.kept_heads(head_ratio), shape.kept_ffn(ffn_ratio)) == (6, 948)
    assert abs(shape.fraction(head_ratio, ffn_ratio) - 0.65) <= 0.001
