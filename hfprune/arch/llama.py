"""Llama, Mistral, Qwen2: GQA attention and a gated MLP.

Their configs carry `head_dim`, so uniform head counts (`num_attention_heads`, `num_key_value_heads`) and FFN
width (`intermediate_size`) are written to config.json, and a uniformly pruned checkpoint loads with plain
`AutoModelForCausalLM.from_pretrained`.
"""

from .base import Adapter, AttentionSpec, FfnSpec, StackSpec
from .registry import register_adapter

LLAMA = register_adapter(
    Adapter(
        model_types=("llama", "mistral", "qwen2"),
        stacks=(
            StackSpec(
                name="decoder",
                path="layers",
                attention=(
                    AttentionSpec(
                        kind="attention",
                        module="self_attn",
                        q="q_proj",
                        k="k_proj",
                        v="v_proj",
                        o="self_attn.o_proj",
                        attributes={"num_key_value_groups": "groups"},
                        bias_field="attention_bias",  # Llama only: Mistral and Qwen2 configs have no such field
                    ),
                ),
                ffn=FfnSpec(
                    inputs=("mlp.gate_proj", "mlp.up_proj"),
                    output="mlp.down_proj",
                    residual="post_attention_layernorm:0",
                    attributes={"mlp": "intermediate_size"},
                    bias_field="mlp_bias",
                ),
                layers_field="num_hidden_layers",
                ffn_field="intermediate_size",
                heads_field="num_attention_heads",
                kv_heads_field="num_key_value_heads",
                head_dim_field="head_dim",
            ),
        ),
    )
)
