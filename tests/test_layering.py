"""Data flows one way: lower layers never import higher ones, and heavy frameworks are only imported on use.

Every module under forwardpass/ is read with `ast`; its imports of forwardpass modules (module level and inside
functions, absolute and relative) are checked against LAYERS. A new top-level module must be placed in LAYERS.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import forwardpass

PACKAGE = Path(forwardpass.__file__).resolve().parent

# Lowest first. A module may import from its own layer or any layer before it, never from a later one.
# errors < tensor < config < repository < backends < pipeline < model < measure < cli are fixed; the other
# names are the design's planned modules, placed where DESIGN.md's data flow puts them.
LAYERS: list[set[str]] = [
    {"errors"},
    {"tensor"},
    {"config"},
    {"repository"},
    {"backends"},
    {"formats"},
    {"pipeline"},
    {"decisions", "quality"},
    {"scheduler"},
    {"model"},
    {"ensemble"},  # pipelines of models: each step a Model
    {"explain", "generation"},  # generation: the decode loop over a Model's session
    {"registry"},
    {"measure"},
    {"precision"},  # makes variants of a model and measures them: needs model, pipeline and measure
    {"server", "modes"},
    {"client"},  # talks to a server: reuses its wire codec and generated protos
    {"cli", "__main__", "config_reference"},  # config_reference: a generator of docs/config.md, run as a tool
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

# Within a layer, modules at different points of DESIGN.md's one-way flow never import each other: what passes
# between them is the data the flow carries, not code. Each entry: two groups of modules (a name covers its
# submodules) that must not import one another.
SEPARATE_STEPS: list[tuple[set[str], set[str]]] = [
    # pipeline/: preprocessing (raw item -> arrays) and postprocessing (output rows -> predictions). Shared by both and
    # in neither group: geometry (the image transform preprocessing records and postprocessing maps back through),
    # kinds (which preprocessor a config names), complete (load-time config completion) and the package's assembly.
    (
        {
            f"forwardpass.pipeline.{name}"
            for name in ("image", "text", "tabular", "interactions", "records", "audio", "arrays")
        },
        {
            f"forwardpass.pipeline.{name}"
            for name in ("outputs", "detection", "segmentation", "ocr", "anchors", "draw", "speech")
        },
    ),
    # quality checks a record before preprocessing; decisions act on a prediction after postprocessing.
    ({"forwardpass.quality"}, {"forwardpass.decisions"}),
    # explanations and text generation are two uses of a Model, neither built on the other.
    ({"forwardpass.explain"}, {"forwardpass.generation"}),
]
PIPELINE_SHARED = {
    "forwardpass.pipeline",
    *(f"forwardpass.pipeline.{name}" for name in ("geometry", "kinds", "complete")),
}
# One way only: a mode may host the server (modes/ray_serve.py runs its ASGI app on Ray Serve); the server never
# imports a mode.
# Each entry: (importers, what they never import).
ONE_WAY: list[tuple[set[str], set[str]]] = [({"forwardpass.server"}, {"forwardpass.modes"})]


def _within(name: str, group: set[str]) -> bool:
    return any(name == member or name.startswith(member + ".") for member in group)


def step_crossing(importer: str, target: str) -> bool:
    """Whether `importer` importing `target` crosses between separate flow steps of one layer."""
    separate = any(
        (_within(importer, first) and _within(target, second)) or (_within(importer, second) and _within(target, first))
        for first, second in SEPARATE_STEPS
    )
    return separate or any(
        _within(importer, never) and _within(target, never_imports) for never, never_imports in ONE_WAY
    )


# Never imported at module level inside forwardpass/ (only inside the function that needs them).
HEAVY = {
    "torch",
    "torchvision",
    "tensorflow",
    "keras",
    "jax",
    "sklearn",
    "skl2onnx",
    "tf2onnx",
    "transformers",
    "ray",
    "mxnet",
    "xgboost",
    "lightgbm",
    "onnxmltools",
    "onnxscript",
    "sentence_transformers",
    "safetensors",
    "onnx2torch",
    "matplotlib",
    "shap",
    "scipy",
    "fairlearn",
    "pandas",
    "pyarrow",
    "mlperf_loadgen",
}


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name, e.g. "forwardpass.config" or "torch.nn"
    line: int
    module_level: bool  # runs when the module is imported: not inside a function, not under TYPE_CHECKING


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def collect_imports(source: str, package: str) -> list[Import]:
    """All imports in `source`, relative ones resolved against `package` (the module's own package)."""
    found: list[Import] = []

    def visit(nodes: list[ast.stmt] | ast.AST, module_level: bool) -> None:
        children = nodes if isinstance(nodes, list) else list(ast.iter_child_nodes(nodes))
        for child in children:
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, module_level=False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(child.body, module_level=False)
                visit(child.orelse, module_level)
            elif isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, module_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    target = ".".join([*parts, child.module] if child.module else parts)
                else:
                    target = child.module or ""
                found.append(Import(target, child.lineno, module_level))
                # `from forwardpass import model` / `from . import text` import submodules: count them too
                if target == "forwardpass" or (child.level and child.module is None):
                    found.extend(Import(f"{target}.{a.name}", child.lineno, module_level) for a in child.names)
            else:
                visit(child, module_level)

    visit(ast.parse(source), module_level=True)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[Import]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return collect_imports(path.read_text(encoding="utf-8"), package)


def layer(dotted: str) -> str:
    """forwardpass.backends.ort -> 'backends'; forwardpass -> '' (the package root)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
NON_ROOT = sorted(name for name in MODULES if name != "forwardpass")


def test_the_package_was_found():
    for expected in ("forwardpass", "forwardpass.errors", "forwardpass.tensor", "forwardpass.backends.ort"):
        assert expected in MODULES


def test_the_walker_sees_every_kind_of_import():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch.nn\n"
        "from . import text\n"
        "from ..model import Model\n"
        "from forwardpass import errors\n"
        "class A:\n"
        "    import sklearn.linear_model\n"
        "if TYPE_CHECKING:\n"
        "    import tensorflow\n"
        "else:\n"
        "    import jax\n"
        "def f():\n"
        "    from forwardpass.cli import app\n"
        "    g = lambda: __import__('x')\n"
    )
    got = {(imp.target, imp.module_level) for imp in collect_imports(source, "forwardpass.pipeline")}
    assert {
        ("torch.nn", True),
        ("forwardpass.pipeline", True),
        ("forwardpass.pipeline.text", True),
        ("forwardpass.model", True),
        ("forwardpass.errors", True),
        ("sklearn.linear_model", True),  # a class body runs at import time
        ("tensorflow", False),
        ("jax", True),
        ("forwardpass.cli", False),
    } <= got


@pytest.mark.parametrize("name", NON_ROOT)
def test_every_module_has_a_layer(name: str):
    assert layer(name) in RANK, f"{name}: add '{layer(name)}' to LAYERS in {__file__}"


@pytest.mark.parametrize("name", NON_ROOT)
def test_lower_layers_never_import_higher_ones(name: str):
    own = RANK.get(layer(name))
    if own is None:
        pytest.fail(f"{name}: add '{layer(name)}' to LAYERS")
    wrong = []
    for imp in imports_of(MODULES[name]):
        if not imp.target.startswith("forwardpass."):
            continue  # third-party, or `from forwardpass import x` (its submodules are listed separately)
        target_rank = RANK.get(layer(imp.target))
        if target_rank is None or target_rank > own:
            wrong.append(f"line {imp.line}: {imp.target} ({layer(imp.target)} is above {layer(name)})")
    assert not wrong, f"{name} imports a higher layer:\n  " + "\n  ".join(wrong)


def test_step_crossings_are_recognised():
    assert step_crossing("forwardpass.pipeline.image", "forwardpass.pipeline.outputs")
    assert step_crossing("forwardpass.pipeline.detection", "forwardpass.pipeline.tabular")
    assert step_crossing("forwardpass.decisions.audit", "forwardpass.quality.drift")
    assert step_crossing("forwardpass.server.http", "forwardpass.modes.batch")
    assert not step_crossing("forwardpass.modes.ray_serve", "forwardpass.server.app")
    assert not step_crossing("forwardpass.pipeline.image", "forwardpass.pipeline.geometry")
    assert not step_crossing("forwardpass.pipeline.detection", "forwardpass.pipeline.outputs")


def test_every_pipeline_module_has_its_flow_step():
    steps = set().union(*SEPARATE_STEPS[0]) | PIPELINE_SHARED
    unplaced = sorted(name for name in MODULES if name.startswith("forwardpass.pipeline") and name not in steps)
    assert not unplaced, f"place {unplaced} in SEPARATE_STEPS (or PIPELINE_SHARED) in {__file__}"


@pytest.mark.parametrize("name", NON_ROOT)
def test_flow_steps_of_one_layer_never_import_each_other(name: str):
    wrong = [f"line {imp.line}: {imp.target}" for imp in imports_of(MODULES[name]) if step_crossing(name, imp.target)]
    assert not wrong, f"{name} imports a separate flow step of its layer (see SEPARATE_STEPS):\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("name", ["forwardpass.errors", "forwardpass.tensor"])
def test_foundations_import_only_errors(name: str):
    own = {imp.target for imp in imports_of(MODULES[name]) if imp.target.startswith("forwardpass")}
    assert own <= {"forwardpass.errors"}, f"{name} imports {sorted(own)}"


def test_errors_imports_no_forwardpass_module():
    assert not [imp for imp in imports_of(MODULES["forwardpass.errors"]) if imp.target.startswith("forwardpass")]


def test_package_root_only_reexports():
    path = MODULES["forwardpass"]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    exported: list[str] | None = None
    for index, node in enumerate(tree.body):
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] in ("forwardpass", "__future__"):
            imported.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
            exported = ast.literal_eval(node.value)
        else:
            pytest.fail(f"{path}:{node.lineno}: only imports from forwardpass and __all__ belong here")
    assert exported is not None, "forwardpass/__init__.py needs an explicit __all__"
    assert set(exported) <= imported, f"__all__ names what is not imported: {set(exported) - imported}"
    for name in exported:
        assert hasattr(forwardpass, name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_heavy_frameworks_are_not_imported_at_module_level(name: str):
    heavy = [
        f"line {imp.line}: {imp.target}"
        for imp in imports_of(MODULES[name])
        if imp.module_level and imp.target.split(".")[0] in HEAVY
    ]
    assert not heavy, f"{name} imports a framework at module level (import it inside the function that needs it)"


def test_importing_the_core_loads_no_framework():
    """The same rule checked at run time: the public API and the ORT backend pull in no framework."""
    code = (
        "import sys, forwardpass, forwardpass.model, forwardpass.pipeline, forwardpass.backends.ort\n"
        f"heavy = sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
