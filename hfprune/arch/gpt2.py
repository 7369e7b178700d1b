"""GPT-2: q/k/v fused in one Conv1D (`c_attn`, outputs [q | k | v]); `split_size` follows the q width."""

from .base import Adapter, AttentionSpec, FfnSpec, StackSpec
from .registry import register_adapter

GPT2 = register_adapter(
    Adapter(
        model_types=("gpt2",),
        stacks=(
            StackSpec(
                name="decoder",
                path="h",
                attention=(
                    AttentionSpec(
                        kind="attention",
                        module="attn",
                        q="c_attn",
                        k="c_attn",
                        v="c_attn",
                        o="attn.c_proj",
                        fused_qkv=True,
                        attributes={"num_heads": "heads", "split_size": "width"},
                    ),
                ),
                ffn=FfnSpec(inputs=("mlp.c_fc",), output="mlp.c_proj", residual="ln_2:0"),
                layers_field="n_layer",
                ffn_field="n_inner",
            ),
        ),
    )
)
