"""The package's layers (docs: ../shared/DESIGN.md): each imports only from the layers below it, and
the core (pure maths) knows no zoo, dataset or file. Imports under ``TYPE_CHECKING`` are annotations only."""

from __future__ import annotations

import ast
from pathlib import Path

import evomerge

#: Bottom up; a module belongs to the longest prefix that names it.
LAYERS = [
    ("base", ["evomerge", "evomerge.errors", "evomerge.console", "evomerge.cache", "evomerge.settings",
              "evomerge.registry", "evomerge.io"]),
    ("sources", ["evomerge.sources", "evomerge.zoo", "evomerge.data", "evomerge.evaluate"]),
    ("items", ["evomerge.items", "evomerge.zoo.lm"]),  # the LM family is built and scored on item files
    ("core", ["evomerge.core"]),
    ("recipe", ["evomerge.recipe", "evomerge.hf_merge"]),
    ("fitness", ["evomerge.fitness"]),
    ("search", ["evomerge.search"]),
    ("distributed", ["evomerge.distributed"]),
    ("commands", ["evomerge.commands", "evomerge.cli"]),
]
CORE_NEVER = ("evomerge.zoo", "evomerge.data", "evomerge.evaluate", "evomerge.sources.zoo", "evomerge.sources.hf",
              "evomerge.items", "evomerge.io")
ROOT = Path(evomerge.__file__).parent


def layer(module: str) -> int:
    matches = [(len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
               if module == p or module.startswith(p + ".")]
    return max(matches)[1]


def imports() -> list[tuple[str, str, int]]:
    """(module, imported module, line) for every run-time ``from evomerge... import``."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("evomerge", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        out += [(module, node.module, node.lineno) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evomerge")
                and id(node) not in typing_only]
    return out


def test_every_module_has_a_layer_and_imports_only_from_below():
    found = imports()
    assert len({m for m, _, _ in found}) > 100
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {other} ({LAYERS[layer(other)][0]}), line {line}"
              for m, other, line in found if layer(other) > layer(m)]
    assert upward == []


def test_the_core_knows_no_zoo_dataset_items_or_files():
    leaks = [(m, other) for m, other, _ in imports() if m.startswith("evomerge.core")
             and any(other == p or other.startswith(p + ".") for p in CORE_NEVER)]
    assert leaks == []
