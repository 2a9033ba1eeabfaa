"""The package's layers, read from its imports: each imports only from itself or below.

From the bottom up: the foundation (input containers, instructions, warnings, search,
metrics), the embedding cache (``_cache/``), the engine (``_engine/``, the only place torch and
transformers are imported), the estimators and the shared parameter list, then the interfaces
that drive the estimators (``_cli/``, ``ray``). Every import, at a module's top or inside a
function, is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sk_instructor"

LAYERS = {
    "foundation": 0,
    "cache": 1,
    "engine": 2,
    "estimators": 3,
    "interfaces": 4,
}
# A package (a folder) holds its modules; any other entry names exactly one module, so that a
# new module is in no layer until it is placed here. The first match decides.
PACKAGES = ("sk_instructor._cache", "sk_instructor._engine", "sk_instructor._cli")
MODULE_LAYERS = [
    ("sk_instructor._cache", "cache"),
    ("sk_instructor._engine", "engine"),
    ("sk_instructor._cli", "interfaces"),
    ("sk_instructor.ray", "interfaces"),
    ("sk_instructor._params", "estimators"),
    ("sk_instructor._vectorizer", "estimators"),
    ("sk_instructor._retrieval", "estimators"),
    ("sk_instructor._similarity", "estimators"),
    ("sk_instructor._finetune", "estimators"),
    ("sk_instructor._text_estimator", "estimators"),
    ("sk_instructor._exceptions", "foundation"),
    ("sk_instructor._warnings", "foundation"),
    ("sk_instructor._progress", "foundation"),
    ("sk_instructor._input", "foundation"),
    ("sk_instructor._instruction", "foundation"),
    ("sk_instructor._search", "foundation"),
    ("sk_instructor.metrics", "foundation"),
    ("sk_instructor.datasets", "foundation"),
    # The package itself is the public facade over the estimators.
    ("sk_instructor", "estimators"),
]
ENGINE_ONLY = (
    "torch",
    "transformers",
    "safetensors",
    "tokenizers",
    "sentence_transformers",
    "openvino",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The engine's one entry: every module outside the engine imports from the engine this alone.
ENGINE_ENTRY = "sk_instructor._engine.entry"


def _layer(module: str) -> str:
    for name, layer in MODULE_LAYERS:
        inside = name in PACKAGES and module.startswith(name + ".")
        if module == name or inside:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to MODULE_LAYERS")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            # "from . import _params" imports the module sk_instructor._params.
            found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
            found.append((name, node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: _module_name(path))
def test_a_module_imports_nothing_from_a_layer_above_its_own(path):
    module = _module_name(path)
    own = LAYERS[_layer(module)]
    for name, line in _imports(path):
        if name.split(".")[0] != "sk_instructor" or name == "sk_instructor.__version__":
            continue
        try:
            imported = LAYERS[_layer(name)]
        except AssertionError:
            continue  # a name imported from a module, e.g. sk_instructor._params.DEFAULTS
        assert imported <= own, f"{module} (line {line}) imports {name} from a higher layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: _module_name(path))
def test_only_the_engine_imports_torch_and_transformers(path):
    module = _module_name(path)
    if _layer(module) == "engine":
        return
    for name, line in _imports(path):
        assert name.split(".")[0] not in ENGINE_ONLY, f"{module} (line {line}) imports {name}"


def test_every_module_is_in_a_layer_and_the_layers_are_the_folders():
    for path in MODULES:
        _layer(_module_name(path))
    folders = {path.parent.name for path in MODULES if path.parent != PACKAGE}
    assert {"_engine", "_cache", "_cli"} <= folders


@pytest.mark.parametrize(
    "path",
    [path for path in MODULES if _layer(_module_name(path)) != "engine"],
    ids=lambda path: _module_name(path),
)
def test_outside_the_engine_only_its_entry_point_is_imported(path):
    # Keys, lookups, loading and encoding are decided in one place: the estimators and the
    # interfaces hand it settings and texts and never reach the registry or a loaded model.
    module = _module_name(path)
    for name, line in _imports(path):
        if name == "sk_instructor._engine" or not name.startswith("sk_instructor._engine."):
            continue  # the package itself is listed beside every "from ._engine.x import"
        assert name == ENGINE_ENTRY or name.startswith(ENGINE_ENTRY + "."), (
            f"{module} (line {line}) imports {name}: outside the engine, import from "
            f"{ENGINE_ENTRY} only"
        )


def test_a_new_module_is_placed_in_a_layer_by_name():
    # The package's own name covers sk_instructor/__init__.py only, not every new module.
    with pytest.raises(AssertionError, match="in no layer"):
        _layer("sk_instructor._something_new")
