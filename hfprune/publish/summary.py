"""What a pruned model is, in numbers: params, FLOPs and kept heads/neurons per site, before and after.

The model card and `hfprune report` both print this. "Before" comes from wherever it is known: a dense model
to compare with (exact, at any length), the `PruningReport` of the run, or the report digest that
`pruning_config.json` keeps. Sites are named as in the dense model (`encoder.3.ffn` stays `encoder.3.ffn` after
`encoder.2` was removed), so before and after line up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from ..arch import STRUCTURE_OF_KIND
from ..checkpoint import loads_without_hfprune
from ..core.record import PruningRecord, get_record
from ..cost.flops import ModelCount, count

_TITLES = {
    "conv": "conv channels",
    "attention": "attention heads",
    "cross_attention": "cross-attention heads",
    "ffn": "FFN neurons",
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_CACHED_SNAPSHOT = re.compile(r"models--([\w.-]+)--([\w.-]+)[/\\]snapshots[/\\]")


@dataclass
class PruningSummary:
    """Numbers about a pruned model. A `None` in a before slot means it is not known.

    Attributes:
        params, flops: `(before, after)`; FLOPs for one sequence of `seq_len` tokens (speech: frames).
        kept: site (dense-model name) -> `(units before, units after)`; units are heads or neurons.
        kinds: site -> "attention", "cross_attention" or "ffn".
        loads_without_hfprune: whether plain `AutoModel*.from_pretrained` reloads the checkpoint.
        recipe: the recipe as a dict, when known.
        base_model: Hub id of the dense model, when known.
        model_class: the transformers class name.
        lengths: the lengths FLOPs are counted at, in words (`ModelCount.lengths`: "41 tokens", "49 frames",
            "1500 encoder frames, 20 decoder tokens").
        hidden: `(before, after)` hidden size, when the residual stream was narrowed; None otherwise.
    """

    params: tuple[int | None, int]
    flops: tuple[int | None, int]
    seq_len: int
    kept: dict[str, tuple[int | None, int]]
    kinds: dict[str, str]
    loads_without_hfprune: bool
    model_class: str
    recipe: dict | None = None
    base_model: str | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    lengths: str | None = None
    hidden: tuple[int, int] | None = None

    def size_rows(self) -> list[tuple[str, object, object]]:
        """`(label, dense, pruned)` rows: params, GFLOPs, then every measured metric."""
        (params_before, params_after), (flops_before, flops_after) = self.params, self.flops
        rows = [
            ("parameters", params_before, params_after),
            (f"GFLOPs ({'conv + ' if 'conv' in self.kinds.values() else ''}attention + FFN, "
             f"{self.lengths or f'{self.seq_len} tokens'})",
             None if flops_before is None else flops_before / 1e9, flops_after / 1e9),
        ]
        if self.hidden:
            rows.append(("hidden size", *self.hidden))
        before, after = self.metrics.get("before", {}), self.metrics.get("after", {})
        return rows + [(name, before.get(name), after.get(name)) for name in dict.fromkeys([*before, *after])]

    def layer_rows(self) -> tuple[list[str], list[tuple[str, list[str]]]]:
        """Column titles and `(layer, cells)` rows of kept units: "6 / 12" (kept / dense), or "6" when the dense
        size is not known."""
        layers = self.per_layer()
        kinds = [k for k in _TITLES if any(k in sites for sites in layers.values())]
        rows = []
        for layer, sites in layers.items():
            cells = []
            for kind in kinds:
                before, after = sites.get(kind, (None, None))
                cells.append("" if after is None else str(after) if before is None else f"{after} / {before}")
            rows.append((layer, cells))
        return [_TITLES[k] for k in kinds], rows

    def per_layer(self) -> dict[str, dict[str, tuple[int | None, int]]]:
        """layer (`encoder.3`) -> kind -> `(before, after)`, in model order."""
        layers: dict[str, dict[str, tuple[int | None, int]]] = {}
        for name, value in self.kept.items():
            layer, kind = name.rsplit(".", 1)
            layers.setdefault(layer, {})[kind] = value
        return layers


def _dense_name(name: str, layers: dict[str, list[int]]) -> str:
    """`decoder.1.ffn` -> `decoder.3.ffn` when layers 1 and 2 of the decoder were removed."""
    stack, index, kind = name.split(".")
    kept = layers.get(stack)
    return f"{stack}.{kept[int(index)]}.{kind}" if kept and int(index) < len(kept) else name


def _base_model(model: nn.Module) -> str | None:
    """The dense model's Hub id: `config._name_or_path` when it is a repo id, or a Hub cache snapshot path."""
    source = str(getattr(model.config, "_name_or_path", "") or "")
    cached = _CACHED_SNAPSHOT.search(source)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    if _HUB_ID.match(source) and not Path(source).exists():
        return source
    return None


def _from_record(after: ModelCount, record: PruningRecord) -> tuple[dict[str, int | None], int | None, int | None]:
    """Dense units per site (current names) and, when exact, dense params and FLOPs, from the record alone.

    A site surgery never touched is as dense as it ever was. Params and FLOPs add back what each removed unit
    cost (`flops.count` is exact per unit); that is impossible once a layer or a whole attention block is gone.
    """
    units: dict[str, int | None] = {}
    # A narrowed hidden size changed what every unit costs: the per-unit sum no longer reaches the dense model.
    params, flops, exact = after.params, after.flops, not record.layers and record.dense_hidden is None
    for name, site in after.sites.items():
        table = STRUCTURE_OF_KIND[site.kind]
        known = record.dense.get(name, {})
        touched = name in getattr(record, table) or name in record.kv_heads
        units[name] = known.get(table, None if touched else site.units)
        kv_units = known.get("kv_heads", None if name in record.kv_heads else site.kv_units)
        if units[name] is None or kv_units is None or (site.units == 0 and units[name]):
            exact = False
            continue
        if site.kind == "conv" and units[name] != site.units:
            exact = False  # a removed channel also narrowed the next conv's inputs: not a per-unit sum
            continue
        params += (units[name] - site.units) * site.params_per_unit
        params += (kv_units - site.kv_units) * site.params_per_kv_unit
        flops += (units[name] - site.units) * site.flops_per_unit + (kv_units - site.kv_units) * site.flops_per_kv_unit
    return units, (params if exact else None), (flops if exact else None)


def summarize(
    model: nn.Module,
    report=None,
    dense: nn.Module | None = None,
    seq_len: int | None = None,
    metrics: dict[str, dict] | None = None,
    base_model: str | None = None,
) -> PruningSummary:
    """Sum up a pruned model against what it was.

    Args:
        model: the pruned model (real or on the meta device).
        report: the `PruningReport` of the run, if at hand (else the digest saved in pruning_config.json).
        dense: the dense model, if at hand; wins over everything else.
        seq_len: length for FLOPs. Defaults to the report's length (so its before-FLOPs apply), else 128.
        metrics: optional `{"before": {...}, "after": {...}}` measured numbers (latency, accuracy...).
        base_model: Hub id of the dense model; guessed from `config._name_or_path` when not given.

    Returns:
        `PruningSummary`.

    Example:
        ```python
        >>> summary = summarize(hfprune.from_pretrained("out/bert-pruned", device="meta"))
        >>> summary.kept["encoder.0.attention"]
        (12, 7)
        ```
    """
    record = get_record(model) or PruningRecord()
    digest = (report.summary() if report is not None else record.report) or {}
    seq_len = seq_len or digest.get("seq_len") or 128
    encoder_seq_len = digest.get("encoder_seq_len")  # encoder-decoders: the encoder's length of the run
    # Models pruned with `channels` count their conv feature encoder, as their budget did, even if no channel went.
    structures = (getattr(report, "recipe", None) and report.recipe.structures) or (record.recipe or {}).get(
        "structures", []
    )
    conv = bool(record.channels) or "channels" in structures or any(n.endswith(".conv") for n in digest.get("kept", {}))
    after = count(model, seq_len=seq_len, encoder_seq_len=encoder_seq_len, conv=conv)
    renamed = {_dense_name(n, record.layers): s for n, s in after.sites.items()}

    if dense is not None:
        before = count(dense, seq_len=seq_len, encoder_seq_len=encoder_seq_len, conv=conv)
        before_units = {n: s.units for n, s in before.sites.items()}
        params_before, flops_before = before.params, before.flops
    else:
        from_record, params_before, flops_before = _from_record(after, record)
        before_units = {n: pair[0] for n, pair in digest.get("kept", {}).items()}
        # The record is exact per site; the report digest covers sites that are gone altogether.
        before_units.update({_dense_name(n, record.layers): u for n, u in from_record.items() if u is not None})
        if digest.get("params"):
            params_before = digest["params"][0]
        if digest.get("flops") and digest.get("seq_len") == seq_len:
            flops_before = digest["flops"][0]

    kinds = {n: n.rsplit(".", 1)[1] for n in before_units} | {n: s.kind for n, s in renamed.items()}
    order = sorted({*before_units, *renamed}, key=_model_order)
    kept = {n: (before_units.get(n), renamed[n].units if n in renamed else 0) for n in order}
    to_dict = getattr(getattr(report, "recipe", None), "to_dict", None)
    recipe = to_dict() if to_dict else record.recipe
    if not metrics and digest.get("latency_s") and None not in digest["latency_s"]:
        # A latency budget's own timings (random inputs at the budget's lengths), shown until the caller measures.
        label = f"latency (ms, batch {(recipe or {}).get('latency_batch_size', 1)})"
        before, after_seconds = digest["latency_s"]
        metrics = {"before": {label: round(before * 1e3, 3)}, "after": {label: round(after_seconds * 1e3, 3)}}
    return PruningSummary(
        params=(params_before, after.params),
        flops=(flops_before, after.flops),
        seq_len=seq_len,
        kept=kept,
        kinds=kinds,
        loads_without_hfprune=loads_without_hfprune(model),
        model_class=type(model).__name__,
        recipe=recipe,
        base_model=base_model or _base_model(model),
        metrics=metrics or {},
        lengths=after.lengths,
        hidden=(record.dense_hidden, len(record.hidden)) if record.dense_hidden and record.hidden else None,
    )


def _model_order(name: str) -> tuple:
    """Conv feature encoder first, encoder before decoder, then layer number (10 after 9), then attention,
    cross-attention, FFN."""
    stack, index, kind = name.split(".")
    return (kind != "conv", stack != "encoder", stack, int(index), tuple(_TITLES).index(kind))


def ratio(before, after) -> str:
    """`after / before` as a percentage, or "" when either is not a number."""
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        return f"{after / before:.1%}"
    return ""


def number(value) -> str:
    """Thousands separators for counts, 4 significant digits for measurements, "" for unknown."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
