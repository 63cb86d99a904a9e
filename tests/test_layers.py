"""The package's layers: no module imports from a layer above its own (lazy imports included).

A newcomer reads the layers bottom-up; a cycle or an upward import is how annexes grow without a
plan, so this test names any that appears. Imports under ``if TYPE_CHECKING:`` are type hints
only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import openhart

PACKAGE = Path(openhart.__file__).parent

# Bottom to top. A module may import its own group and any group of a lower layer.
LAYERS: list[set[str]] = [
    {"version", "errors", "error_boundary", "utils", "validation"},
    {"text", "tokenizer", "transformer", "diffusion", "data"},
    {"sampling"},
    {"models", "quantization"},
    {"compat", "presets"},
    {"hub"},
    {"loading"},
    {"command_setup", "lora_cli"},
    {"evaluation", "training", "synthesis", "serve"},
    {"cli", "edit_cli", "synthesize", "__main__", "__init__"},
]
LAYER_OF = {group: level for level, groups in enumerate(LAYERS) for group in groups}


def _group(module: str) -> str:
    """``openhart.models.hart`` → ``models``; ``openhart`` itself → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every ``openhart`` import, at any depth, outside TYPE_CHECKING blocks."""
    found: list[tuple[int, str]] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "openhart":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name) for alias in node.names if alias.name.startswith("openhart.")
            )
        pending.extend(ast.iter_child_nodes(node))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_group_has_a_layer():
    groups = {_group(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert groups - set(LAYER_OF) == set(), "add the new module or subpackage to LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _group(_module_name(path))
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            target = _group(module)
            if target != source and LAYER_OF[target] > LAYER_OF[source]:
                upward.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {module} ({target})"
                )
    assert upward == []


def test_the_checker_sees_lazy_imports_and_skips_type_hints():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from openhart.cli import app\n"
        "def f():\n    from openhart.serve import app\n"
    )
    assert [module for _, module in _imported_modules(tree)] == ["openhart.serve"]
