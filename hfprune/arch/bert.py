"""BERT and its copies (RoBERTa, XLM-RoBERTa, ELECTRA): q/k/v in `attention.self`, o in `attention.output`.

Their configs derive the head size as hidden_size / num_attention_heads, so head counts cannot be written into
config.json; per-layer heads live in pruning_config.json. A uniform FFN width goes into `intermediate_size`. A
pruned hidden size goes into `hidden_size` too, but the stock model cannot be built from it (the head size would
follow): such checkpoints reload through `hfprune.from_pretrained`, which builds the dense size and narrows it.
"""

from .base import Adapter, AttentionSpec, FfnSpec, HiddenSpec, StackSpec
from .registry import register_adapter

# Task heads that read the stream itself. A BERT sequence classifier reads the pooler's output (the pooler reads
# the stream, and is listed in `readers`); RoBERTa's reads the <s> token's hidden state through `classifier.dense`.
_BERT_HEADS = {"Model": (), "ForSequenceClassification": (), "ForTokenClassification": ("classifier",),
               "ForQuestionAnswering": ("qa_outputs",)}
_ROBERTA_HEADS = {"Model": (), "ForSequenceClassification": ("classifier.dense",),
                  "ForTokenClassification": ("classifier",), "ForQuestionAnswering": ("qa_outputs",)}

HIDDEN = HiddenSpec(
    embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"),
    norms=("embeddings.LayerNorm",),
    layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
    heads={
        **{f"Bert{suffix}": paths for suffix, paths in _BERT_HEADS.items()},
        **{f"{family}{suffix}": paths
           for family in ("Roberta", "XLMRoberta") for suffix, paths in _ROBERTA_HEADS.items()},
    },
    readers=("pooler.dense",),
    model_types=("bert", "roberta", "xlm-roberta"),  # not ELECTRA: its embeddings may be narrower than the stream
)


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
        hidden=HIDDEN,
    )
)
