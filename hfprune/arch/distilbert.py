"""DistilBERT: one attention module with q_lin/k_lin/v_lin/out_lin, FFN lin1/lin2."""

from .base import Adapter, AttentionSpec, FfnSpec, HiddenSpec, StackSpec
from .registry import register_adapter

HIDDEN = HiddenSpec(
    embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
    norms=("embeddings.LayerNorm",),
    layer_norms=("sa_layer_norm", "output_layer_norm"),
    heads={
        "DistilBertModel": (),
        "DistilBertForSequenceClassification": ("pre_classifier",),
        "DistilBertForTokenClassification": ("classifier",),
        "DistilBertForQuestionAnswering": ("qa_outputs",),
    },
    attributes={"attention": "dim"},
    size_field="dim",
)

DISTILBERT = register_adapter(
    Adapter(
        model_types=("distilbert",),
        stacks=(
            StackSpec(
                name="encoder",
                path="transformer.layer",
                attention=(
                    AttentionSpec(
                        kind="attention",
                        module="attention",
                        q="q_lin",
                        k="k_lin",
                        v="v_lin",
                        o="attention.out_lin",
                        head_dim_attr="attention_head_size",
                        attributes={"n_heads": "heads"},
                    ),
                ),
                ffn=FfnSpec(inputs=("ffn.lin1",), output="ffn.lin2", residual="ffn:0"),
                layers_field="n_layers",
                ffn_field="hidden_dim",
            ),
        ),
        hidden=HIDDEN,
    )
)
