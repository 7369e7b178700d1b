"""The model card (`README.md`) of a pruned model: Hub metadata, size and speed before/after, what each layer
kept (table and plot), the recipe, and how to load it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from huggingface_hub import ModelCardData

from .summary import PruningSummary, number, ratio

PLOT_FILE = "pruning.png"

# transformers' auto-mapping table -> (Auto class, pipeline tag). The first table naming the model's class wins,
# so task-specific tables come before the generic one.
_TASKS = (
    ("MODEL_FOR_CTC_MAPPING_NAMES", "AutoModelForCTC", "automatic-speech-recognition"),
    ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "AutoModelForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "AutoModelForAudioClassification", "audio-classification"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForSequenceClassification", "text-classification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "AutoModelForTokenClassification", "token-classification"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "AutoModelForQuestionAnswering", "question-answering"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM", "text-generation"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM", "fill-mask"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM", "text2text-generation"),
    ("MODEL_MAPPING_NAMES", "AutoModel", "feature-extraction"),
)


def task_of(model_class: str) -> tuple[str | None, str | None]:
    """`(Auto class, pipeline tag)` for a transformers class name, from transformers' own auto mappings.

    Example:
        ```python
        >>> task_of("Wav2Vec2ForCTC")
        ('AutoModelForCTC', 'automatic-speech-recognition')
        ```
    """
    from transformers.models.auto import modeling_auto

    for table, auto, tag in _TASKS:
        for names in getattr(modeling_auto, table, {}).values():
            if model_class in ((names,) if isinstance(names, str) else names):
                return auto, tag
    return None, None


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _size_table(summary: PruningSummary) -> list[str]:
    rows = [[label, number(b), number(a), ratio(b, a)] for label, b, a in summary.size_rows()]
    return _markdown(["", "dense", "pruned", "pruned / dense"], rows)


def _layer_table(summary: PruningSummary) -> list[str]:
    titles, rows = summary.layer_rows()
    return _markdown(["layer", *titles], [[layer, *cells] for layer, cells in rows])


def _how_to_load(summary: PruningSummary, repo_id: str) -> list[str]:
    lines = [
        "```python",
        "import hfprune",
        "",
        f'model = hfprune.from_pretrained("{repo_id}")',
        "```",
        "",
    ]
    auto, _ = task_of(summary.model_class)
    if summary.loads_without_hfprune:
        auto = auto or summary.model_class
        lines += [
            "`config.json` describes every pruned shape, so plain transformers (and any runtime that reads",
            "transformers checkpoints) loads it too:",
            "",
            "```python",
            f"from transformers import {auto}",
            "",
            f'model = {auto}.from_pretrained("{repo_id}")',
            "```",
        ]
    else:
        lines += [
            "The per-layer sizes are in `pruning_config.json`, which plain `from_pretrained` does not read: load",
            "it with hfprune (`pip install hfprune`), which rebuilds the pruned shapes before loading the weights.",
        ]
    return lines


def model_card(summary: PruningSummary, repo_id: str, plot: str | None = PLOT_FILE) -> str:
    """The text of README.md for a pruned model.

    Args:
        summary: from `hfprune.publish.summary.summarize`.
        repo_id: the Hub repository (or local directory) the card describes; used in the loading snippets.
        plot: file name of the kept-per-layer PNG beside the card, or `None` when there is none.

    Returns:
        Markdown with a YAML metadata header.
    """
    _, pipeline_tag = task_of(summary.model_class)
    base_model = summary.base_model if summary.base_model != repo_id else None  # re-pruned in place: no self-link
    metadata = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["pruned", "hfprune", "structured-pruning"],
    )
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else None
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {repo_id.rstrip('/').rsplit('/', 1)[-1]}",
        "",
        f"{source or 'A'} `{summary.model_class}` " + ("" if source else "model ")
        + "structurally pruned with hfprune: attention heads and FFN "
        "neurons were physically removed, so the model is smaller and faster, not just sparse.",
        "",
        "## Size and speed",
        "",
        *_size_table(summary),
        "",
        "## Kept per layer",
        "",
    ]
    if plot:
        lines += [f"![heads and neurons kept per layer]({plot})", ""]
    lines += [*_layer_table(summary), ""]
    if summary.recipe:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(summary.recipe, sort_keys=False).rstrip(), "```", ""]
    lines += ["## How to load", "", *_how_to_load(summary, repo_id), ""]
    return "\n".join(lines)


def write_card(directory: str | os.PathLike, summary: PruningSummary, repo_id: str) -> list[Path]:
    """Write README.md, and the kept-per-layer plot when matplotlib is installed, into `directory`.

    Returns:
        The paths written.
    """
    directory = Path(directory)
    written = []
    try:
        from .plot import plot_kept

        written.append(plot_kept(summary, directory / PLOT_FILE))
    except ImportError:  # matplotlib is optional: the card keeps its tables, just no picture
        pass
    readme = directory / "README.md"
    readme.write_text(model_card(summary, repo_id, plot=PLOT_FILE if written else None))
    return [readme, *written]
