"""wav2vec2 and HuBERT: transformer encoder over CNN features (the CNN is not a site here)."""

from .base import Adapter, AttentionSpec, FfnSpec, StackSpec
from .registry import register_adapter


def _ffn_residual(layer) -> str:
    # Post-LN layers add the FFN to its own (normalised) input; "stable layer norm" (pre-LN) layers add it to
    # the input of final_layer_norm.
    return "final_layer_norm:0" if type(layer).__name__.endswith("StableLayerNorm") else "feed_forward:0"


ENCODER = StackSpec(
    name="encoder",
    path="encoder.layers",
    attention=(
        AttentionSpec(
            kind="attention",
            module="attention",
            q="q_proj",
            k="k_proj",
            v="v_proj",
            o="attention.out_proj",
            attributes={"num_heads": "heads"},
        ),
    ),
    ffn=FfnSpec(
        inputs=("feed_forward.intermediate_dense",),
        output="feed_forward.output_dense",
        residual=_ffn_residual,
    ),
    layers_field="num_hidden_layers",
    ffn_field="intermediate_size",
)

WAV2VEC2 = register_adapter(Adapter(model_types=("wav2vec2", "hubert"), stacks=(ENCODER,)))
