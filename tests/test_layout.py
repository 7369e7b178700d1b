"""scripts/ uses hfprune as a user would: only `import hfprune` and the names in `hfprune.__all__`, no `sys.path`
edits; every script module imports (the repository root is on the path through pytest's `pythonpath`)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import hfprune

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").rglob("*.py"))
PUBLIC = set(hfprune.__all__)


def private_uses(path: Path) -> list[str]:
    """`line: what` for every import of an hfprune submodule and every `hfprune.<name>` not in `__all__`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {"hfprune"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hfprune."):
                    found.append(f"{node.lineno}: import {alias.name}")
                elif alias.name == "hfprune":
                    aliases.add(alias.asname or "hfprune")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("hfprune."):
                found.append(f"{node.lineno}: from {node.module} import ...")
            elif node.module == "hfprune":
                found += [f"{node.lineno}: from hfprune import {a.name}" for a in node.names if a.name not in PUBLIC]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in PUBLIC:
                found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_checker_sees_private_names(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import hfprune\nimport hfprune.core.linear\nfrom hfprune.sparsity import targets\n"
                      "from hfprune import prune, _secret\nimport hfprune as hp\nhfprune.count(m)\nhp.core.x\n")
    assert private_uses(script) == ["2: import hfprune.core.linear", "3: from hfprune.sparsity import ...",
                                    "4: from hfprune import _secret", "7: hp.core"]


def test_scripts_exist_in_their_folders():
    folders = {path.relative_to(ROOT / "scripts").parts[0] for path in SCRIPTS if path.parent != ROOT / "scripts"}
    assert folders == {"examples", "benchmarks", "tools"}
    assert (ROOT / "scripts" / "benchmarks" / "__init__.py").is_file()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_use_only_public_hfprune_names_and_no_sys_path(path):
    assert private_uses(path) == [], f"{path.relative_to(ROOT)} reaches past hfprune's public API"
    assert "sys.path" not in path.read_text(), f"{path.relative_to(ROOT)} edits sys.path; import by module path"


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.name != "__init__.py"], ids=lambda p: p.stem)
def test_every_script_imports_by_module_path(path):
    module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if path.parent.name in ("examples", "tools") or path.stem.startswith("bench"):
        assert callable(getattr(module, "main", None)), f"{path.relative_to(ROOT)} has no main()"
