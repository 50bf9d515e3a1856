"""The package's rules that import-linter cannot state (docs/architecture.md, "Rules")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import genzoo
from genzoo.registry import model_names

PACKAGE = Path(genzoo.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_the_package_facade(path: Path) -> None:
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            assert all(alias.name != "genzoo" for alias in node.names), f"{path}:{node.lineno} imports genzoo"
        if isinstance(node, ast.ImportFrom):
            assert node.module != "genzoo" or node.level, f"{path}:{node.lineno} imports from the genzoo facade"


# the tokenizer module reads tokenizer sources, one of which is a Hugging Face hub name (tokenizer=hf:NAME)
OUTSIDE_MODELS = [p for p in MODULES if "models" not in p.relative_to(PACKAGE).parts and p.name != "tokenizer.py"]


@pytest.mark.parametrize("path", OUTSIDE_MODELS,
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_branch_on_a_model_name_outside_the_models(path: Path) -> None:
    names = set(model_names())
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Compare):
            constants = [n.value for n in (node.left, *node.comparators) if isinstance(n, ast.Constant)]
            named = [c for c in constants if isinstance(c, str) and c.rstrip(":") in names]
            assert not named, f"{path}:{node.lineno} branches on model name {named[0]!r}"
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                assert arg.value.rstrip(":") not in names, f"{path}:{node.lineno} branches on prefix {arg.value!r}"
