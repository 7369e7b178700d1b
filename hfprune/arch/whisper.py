"""Whisper: encoder self-attention, decoder self-attention and decoder cross-attention, each its own site.

Whisper derives head_dim as d_model / heads, so head counts stay in pruning_config.json; uniform FFN widths go
to `encoder_ffn_dim` / `decoder_ffn_dim`.
"""

from .base import Adapter, AttentionSpec, FfnSpec, StackSpec
from .registry import register_adapter


def _attention(kind: str, module: str, residual: str = ":0") -> AttentionSpec:
    return AttentionSpec(
        kind=kind,
        module=module,
        q="q_proj",
        k="k_proj",
        v="v_proj",
        o=f"{module}.out_proj",
        attributes={"num_heads": "heads"},
        residual=residual,
    )


_FFN = FfnSpec(inputs=("fc1",), output="fc2", residual="final_layer_norm:0")

WHISPER = register_adapter(
    Adapter(
        model_types=("whisper",),
        stacks=(
            StackSpec(
                name="encoder",
                path="encoder.layers",
                attention=(_attention("attention", "self_attn"),),
                ffn=_FFN,
                layers_field="encoder_layers",
                ffn_field="encoder_ffn_dim",
            ),
            StackSpec(
                name="decoder",
                path="decoder.layers",
                attention=(
                    _attention("attention", "self_attn"),
                    _attention("cross_attention", "encoder_attn", residual="encoder_attn_layer_norm:0"),
                ),
                ffn=_FFN,
                layers_field="decoder_layers",
                ffn_field="decoder_ffn_dim",
            ),
        ),
        # Measured on tiny.en (scripts/benchmarks/whisper_sensitivity.py, test WER 14.5 dense, a quarter of one
        # structure removed): the encoder's heads cannot go one-shot (55.7 plain, 35.2 reconstructed;
        # 53 % of the FLOPs per utterance, 725 MFLOPs a head at 1500 frames), every other structure costs
        # 1-3 points. The decoder's self-attention and FFN are 0.7 % of the FLOPs: nothing to gain, and at 90 %
        # FLOPs the search still took them (Fisher scores them near zero) for 18.6 WER, against 15.7 with the
        # encoder FFN and cross-attention alone (48 test clips). Weight reconstruction helps once it is fitted on
        # enough utterances (`refine.MIN_EXAMPLES`; 96 test clips, dense 14.95): at 80 % FLOPs 70.0 -> 25.3 (128
        # calibration clips) and 76.7 -> 32.2 (16); at 90 %, mean of 3 calibration draws, 24.0 -> 20.6 (64 clips)
        # and 28.6 -> 28.3 (16). Mask tuning and rearrangement were never better.
        oneshot_defaults={"sites": ["encoder.*.ffn", "decoder.*.cross_attention"], "rearrange": False,
                          "tune": False, "reconstruct": True},
    )
)
