"""English prose for language-model benchmarks: the Python documentation's sources, as Debian ships them.

`apt-get install python3-doc` installs the reStructuredText sources of the Python documentation
(`/usr/share/doc/python3.X/html/_sources/**/*.rst.txt`). Each file is one document; its prose paragraphs are kept
(directives, code blocks, tables, headings and field lists are dropped, inline markup reduced to its text).

Documents are split by a hash of their path into three parts that share no document: `calibration` (15 %),
`train` (for recovery training, 75 %) and `evaluation` (10 %). The split depends only on the file names, so it
is the same on every machine with the same package. `windows` cuts a part into fixed-length token windows: the
documents concatenated in path order, separated by the tokenizer's end-of-sequence token.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

PARTS = {"evaluation": range(0, 10), "calibration": range(10, 25), "train": range(25, 100)}
SECTIONS = ("tutorial", "howto", "faq", "whatsnew", "reference", "using", "extending", "library")

_ROLE = re.compile(r":[\w:.-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`name` / :ref:`text <target>` -> text
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")  # `text <url>`_ -> text
_LITERAL = re.compile(r"``([^`]+)``")
_EMPHASIS = re.compile(r"\*\*?([^*]+)\*\*?")
_REFERENCE = re.compile(r"`([^`]+)`_*")
_UNDERLINE = re.compile(r"^([=\-^~*#\"'+`:.])\1{2,}\s*$")


class DocsMissingError(FileNotFoundError):
    """The Python documentation sources are not installed."""


def sources_root() -> Path:
    """The newest installed `/usr/share/doc/python3.X/html/_sources`."""
    roots = sorted(Path("/usr/share/doc").glob("python3*/html/_sources"), key=lambda p: p.parent.parent.name)
    if not roots:
        raise DocsMissingError("the Python documentation sources are missing: `apt-get install python3-doc`")
    return roots[-1]


def _plain(text: str) -> str:
    for pattern in (_ROLE, _LINK, _LITERAL, _EMPHASIS, _REFERENCE):
        text = pattern.sub(r"\1", text)
    return re.sub(r"\s+", " ", text.replace("::", ":")).strip()


def prose(source: str) -> str:
    """The prose paragraphs of one reStructuredText file, one per line-separated block."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", source):
        lines = block.split("\n")
        first = lines[0]
        if not first.strip() or first[0].isspace() or first.startswith(("..", "+", "|", ">>>", ":", "*", "-", "#")):
            continue  # indented (code, directive bodies), directives, tables, field lists, bullet lists
        if any(_UNDERLINE.match(line) for line in lines):
            continue  # a heading
        text = _plain(" ".join(lines))
        if len(text.split()) >= 8 and text[-1] in ".:?!)":
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


def part_of(relative_path: str) -> str:
    """The part (`calibration`, `train`, `evaluation`) a document belongs to, from a hash of its path."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 100
    return next(name for name, buckets in PARTS.items() if bucket in buckets)


def documents(part: str, root: Path | None = None) -> list[str]:
    """The prose documents of `part`, in path order (empty documents left out)."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; use one of {list(PARTS)}")
    root = root or sources_root()
    texts = []
    for section in SECTIONS:
        for path in sorted((root / section).rglob("*.rst.txt")):
            relative = str(path.relative_to(root))
            if part_of(relative) == part:
                text = prose(path.read_text(errors="replace"))
                if text:
                    texts.append(text)
    return texts


def windows(tokenizer, part: str, length: int, count: int | None = None, seed: int | None = None) -> torch.Tensor:
    """Token windows of `length` from `part`: `(count, length)` input ids.

    Without a seed, the first `count` windows in order (the evaluation set: the same tokens for every model);
    with a seed, `count` windows drawn without replacement (a calibration draw). `count=None`: all windows.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in documents(part):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    total = len(ids) // length
    if total == 0 or (count is not None and count > total):
        raise ValueError(f"the {part} part holds {total} windows of {length} tokens; {count} were asked for")
    every = torch.tensor(ids[: total * length]).view(total, length)
    if count is None:
        return every
    if seed is None:
        return every[:count]
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return every[order[:count]]
