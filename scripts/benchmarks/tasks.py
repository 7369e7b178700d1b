"""Real text-classification tasks that Debian packages ship, for benchmarks over more than one data set.

Every task returns the same `DatasetDict` as `fortunes.load_fortunes`: splits `train` / `validation` / `test`
(80 / 10 / 10, seeded, stratified per label), columns `text` and `label` (a `ClassLabel`). Classes are capped at
`per_class` examples, taken in a seeded order, so that no class dominates and fine-tuning stays short.

- `fortunes`: which `fortune` topic a quote comes from (`apt-get install fortunes`; see `fortunes.py`).
- `debian`: which archive section a package is filed in, from its one-line description (the package lists of apt:
  `apt-get update` then `apt-cache dumpavail`). Sections whose descriptions are prose about what a program does
  (admin, games, graphics, net, science, sound, text, utils); libraries, language bindings and documentation
  packages are left out, because their names and boilerplate give the section away.
- `pydocs`: which part of the Python documentation a paragraph comes from (tutorial, howto, FAQ, what's new,
  language reference, extending, library reference, C API; `apt-get install python3-doc`; see `python_docs.py`).
"""

from __future__ import annotations

import random
import re
import subprocess
from collections.abc import Callable

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from scripts.benchmarks import fortunes, python_docs

DEBIAN_SECTIONS = ("admin", "games", "graphics", "net", "science", "sound", "text", "utils")
PYDOCS_SECTIONS = ("tutorial", "howto", "faq", "whatsnew", "reference", "extending", "library", "c-api")
_SKIPPED_PACKAGE = re.compile(r"(-dev|-doc|-dbg|-dbgsym|-data|-common)$|^(lib|python3-|golang-|librust-|node-)")


def _dataset(texts: list[str], labels: list[int], names: tuple[str, ...], split_seed: int = 0) -> DatasetDict:
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(names))})
    indices = fortunes.stratified_split(labels, (0.8, 0.1, 0.1), split_seed)
    return DatasetDict({
        name: Dataset.from_dict({"text": [texts[i] for i in split], "label": [labels[i] for i in split]},
                                features=features)
        for name, split in zip(fortunes.SPLITS, indices, strict=True)
    })


def _capped(per_label: dict[int, list[str]], per_class: int, seed: int) -> tuple[list[str], list[int]]:
    """At most `per_class` texts of every label (a seeded draw, then in their own order), texts found under
    more than one label dropped everywhere (their label is ambiguous)."""
    counts: dict[str, int] = {}
    for items in per_label.values():
        for text in set(items):
            counts[text] = counts.get(text, 0) + 1
    texts, labels = [], []
    for label in sorted(per_label):
        unique = [t for t in dict.fromkeys(per_label[label]) if counts[t] == 1]
        chosen = sorted(random.Random(seed).sample(range(len(unique)), min(per_class, len(unique))))
        texts += [unique[i] for i in chosen]
        labels += [label] * len(chosen)
    return texts, labels


def load_debian(per_class: int = 500, seed: int = 0, max_chars: int = 512) -> DatasetDict:
    """Debian package synopses (the one-line description; apt's package lists carry no long ones) labelled by
    archive section."""
    try:
        records = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise FileNotFoundError(f"apt's package lists cannot be read ({error}): run `apt-get update`") from error
    per_label: dict[int, list[str]] = {i: [] for i in range(len(DEBIAN_SECTIONS))}
    for record in records.split("\n\n"):
        fields, current = {}, None
        for line in record.split("\n"):
            if line.startswith(" ") and current == "Description":
                line = line.strip()
                fields["Description"] += " " + ("" if line == "." else line)
            elif ":" in line:
                current, _, value = line.partition(":")
                fields[current] = value.strip()
        section = fields.get("Section", "").split("/")[-1]
        if section in DEBIAN_SECTIONS and not _SKIPPED_PACKAGE.search(fields.get("Package", "")):
            text = fortunes.clean_text(fields.get("Description", ""), max_chars)
            if len(text.split()) >= 4:
                per_label[DEBIAN_SECTIONS.index(section)].append(text)
    if not any(per_label.values()):
        raise FileNotFoundError("apt's package lists hold no descriptions: run `apt-get update`")
    return _dataset(*_capped(per_label, per_class, seed), DEBIAN_SECTIONS)


def load_pydocs(per_class: int = 500, seed: int = 0, max_chars: int = 512) -> DatasetDict:
    """Paragraphs of the Python documentation labelled by the part of the documentation they come from."""
    root = python_docs.sources_root()
    per_label: dict[int, list[str]] = {}
    for label, section in enumerate(PYDOCS_SECTIONS):
        paragraphs = []
        for path in sorted((root / section).rglob("*.rst.txt")):
            paragraphs += python_docs.prose(path.read_text(errors="replace")).split("\n\n")
        per_label[label] = [fortunes.clean_text(p, max_chars) for p in paragraphs if len(p.split()) >= 12]
    return _dataset(*_capped(per_label, per_class, seed), PYDOCS_SECTIONS)


def load_fortunes_task(per_class: int = 500, seed: int = 0, max_chars: int = 512) -> DatasetDict:
    """The fortunes topics with every topic capped like the other tasks (`fortunes.load_fortunes` keeps all)."""
    texts, labels = fortunes.collect_entries(max_chars=max_chars)
    per_label: dict[int, list[str]] = {}
    for text, label in zip(texts, labels, strict=True):
        per_label.setdefault(label, []).append(text)
    return _dataset(*_capped(per_label, per_class, seed), fortunes.TOPICS)


TASKS: dict[str, Callable[..., DatasetDict]] = {
    "fortunes": load_fortunes_task, "debian": load_debian, "pydocs": load_pydocs,
}


def load_task(name: str) -> DatasetDict:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {list(TASKS)}")
    return TASKS[name]()


if __name__ == "__main__":
    for task in TASKS:
        data = load_task(task)
        print(task, {k: len(v) for k, v in data.items()}, data["train"][0]["text"][:100])
