"""Llama, Mistral, Qwen2: GQA attention and a gated MLP.

Their configs carry `head_dim`, so uniform head counts (`num_attention_heads`, `num_key_value_heads`), FFN
width (`intermediate_size`) and hidden size (`hidden_size`, with `head_dim` written explicitly) are written to
config.json, and a uniformly pruned checkpoint loads with plain `AutoModelForCausalLM.from_pretrained`.
"""

from .base import Adapter, AttentionSpec, FfnSpec, HiddenSpec, StackSpec
from .registry import register_adapter

# Task heads whose inputs are the residual stream (after the final norm), by class-name suffix.
_HEADS = {
    "Model": (),
    "ForCausalLM": ("lm_head",),
    "ForSequenceClassification": ("score",),
    "ForTokenClassification": ("score",),
    "ForQuestionAnswering": ("qa_outputs",),
}

HIDDEN = HiddenSpec(
    embeddings=("embed_tokens",),
    norms=("norm",),
    layer_norms=("input_layernorm", "post_attention_layernorm"),
    heads={f"{family}{suffix}": paths for family in ("Llama", "Mistral", "Qwen2") for suffix, paths in _HEADS.items()},
    attributes={"": "hidden_size", "mlp": "hidden_size"},
    norm_kind="rms",
    head_dim_field="head_dim",  # written explicitly: absent, Llama would derive it from the pruned hidden size
    multiple_of_field="num_attention_heads",  # LlamaConfig.validate_architecture insists (Mistral/Qwen2 do not)
)

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
        hidden=HIDDEN,
    )
)
