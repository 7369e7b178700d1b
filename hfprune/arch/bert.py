"""BERT and its copies (RoBERTa, XLM-RoBERTa, ELECTRA): q/k/v in `attention.self`, o in `attention.output`.

Their configs derive the head size as hidden_size / num_attention_heads, so head counts cannot be written into
config.json; per-layer heads live in pruning_config.json. A uniform FFN width goes into `intermediate_size`.
"""

from .base import Adapter, AttentionSpec, FfnSpec, StackSpec
from .registry import register_adapter


def _attention(kind: str, module: str) -> AttentionSpec:
    return AttentionSpec(
        kind=kind,
        module=f"{module}.self",
        q="query",
        k="key",
        v="value",
        o=f"{module}.output.dense",
        head_dim_attr="attention_head_size",
        attributes={"num_attention_heads": "heads", "all_head_size": "width"},
        residual=f"{module}.output:1",  # BertSelfOutput(hidden_states, input_tensor): LN(dense(h) + input_tensor)
        optional=kind == "cross_attention",  # only BERT-as-decoder with add_cross_attention has it
    )


BERT = register_adapter(
    Adapter(
        model_types=("bert", "roberta", "xlm-roberta", "electra"),
        stacks=(
            StackSpec(
                name="encoder",
                path="encoder.layer",
                attention=(_attention("attention", "attention"), _attention("cross_attention", "crossattention")),
                ffn=FfnSpec(inputs=("intermediate.dense",), output="output.dense", residual="output:1"),
                layers_field="num_hidden_layers",
                ffn_field="intermediate_size",
            ),
        ),
    )
)
