"""The package's layers, read from the source: one direction, no import cycle.

`LAYERS` is where the layers are defined (CONTRIBUTING.md, "Layers",
shows them), lowest first: every module of `keras_pcl/` is in exactly one,
and a module imports only from its own layer and the layers below it, so
every dependency points one way, down: application (training recipe, data
pipelines, command line, benchmark harness, process settings) -> core (the
method: models, losses, mean teachers, peers, deployment and export,
backbones, callbacks, and the speed-up policy) -> acceleration (fused
views, backend fast paths) -> base (argument checks, the Keras and backend
internals). The core reaches the acceleration layer only through the
policy that decides when it runs (`keras_pcl.speedups`). No two modules
import each other, directly or around a loop.

Imports are read with `ast` everywhere in a file (module level and inside
functions) and `importlib.import_module("...")` with a constant name too.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_pcl"

# Module-name prefixes per layer, lowest first, over today's files. A prefix
# covers the module and everything under it (`keras_pcl.training` is the
# subpackage).
LAYERS = {
    "base": (
        "keras_pcl._compat",
        "keras_pcl.validation",
    ),
    "acceleration": (
        "keras_pcl.fast_paths",
        "keras_pcl.fusion",
    ),
    "core": (
        "keras_pcl",  # The package itself (`__init__.py`) only.
        "keras_pcl.augmentation",
        "keras_pcl.backbones",
        "keras_pcl.baselines",
        "keras_pcl.callbacks",
        "keras_pcl.deployment",
        "keras_pcl.export",
        "keras_pcl.losses",
        "keras_pcl.mean_teacher",
        "keras_pcl.methods",
        "keras_pcl.model",
        "keras_pcl.multi_branch",
        "keras_pcl.speedups",
        "keras_pcl.splitting",
        "keras_pcl.views",
    ),
    "application": (
        "keras_pcl.benchmark",
        "keras_pcl.cli",
        "keras_pcl.data",
        "keras_pcl.process",
        "keras_pcl.training",
    ),
}
# The one core module that may import the acceleration layer.
POLICY = "keras_pcl.speedups"
# Imports that break a rule on purpose, each with its reason.
ALLOWED = {
    # `keras_pcl.data` stays reachable as an attribute of the package,
    # loaded on first use (it imports TensorFlow); it moves next.
    ("keras_pcl", "keras_pcl.data"): "lazy public attribute",
}


def package_modules():
    """`{module name: file}` of every module under keras_pcl/."""
    modules = {}
    for directory, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_names(path, module, is_package):
    """Every module name `path` imports, anywhere in the file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                if not is_package:
                    parts = parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base, tuple(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, ()


def import_graph():
    """`{module: set of package modules it imports}`.

    `from a import b` is an edge to `a.b` where that is a module, else to
    `a` (the name comes from `a`'s `__init__.py`); `import a.b.c` to the
    deepest of `a.b.c`, `a.b`, `a` that is a module.
    """
    modules = package_modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        is_package = path.endswith("__init__.py")
        for base, names in imported_names(path, module, is_package):
            if base.split(".")[0] != PACKAGE:
                continue
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(targets) < len(names) or not names:
                name = base
                while name not in modules:
                    name = name.rpartition(".")[0]
                targets.append(name)
            edges.update(t for t in targets if t != module)
        graph[module] = edges
    return graph


def layer_of(module):
    """The layer whose longest prefix matches `module`."""
    best, layer = "", None
    for name, prefixes in LAYERS.items():
        for prefix in prefixes:
            covers = module == prefix or (
                prefix != PACKAGE and module.startswith(prefix + ".")
            )
            if covers and len(prefix) > len(best):
                best, layer = prefix, name
    return layer


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# Reads source files: the same on every backend.


pytestmark = pytest.mark.backend_independent


def test_every_module_is_in_exactly_one_layer():
    for module in package_modules():
        assert layer_of(module) is not None, (
            f"{module} is in no layer: add it to LAYERS in tests/layers_test.py "
            "and to CONTRIBUTING.md's 'Layers'"
        )
    prefixes = [p for group in LAYERS.values() for p in group]
    assert len(prefixes) == len(set(prefixes))
    modules = package_modules()
    for prefix in prefixes:  # No stale entry.
        assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_module_imports_a_layer_above_its_own():
    order = list(LAYERS)
    wrong = []
    for module, imports in import_graph().items():
        here = layer_of(module)
        for target in sorted(imports):
            there = layer_of(target)
            if (module, target) in ALLOWED:
                continue
            if order.index(there) > order.index(here):
                wrong.append(f"{module} ({here}) imports {target} ({there})")
            if here == "core" and there == "acceleration" and module != POLICY:
                wrong.append(
                    f"{module} imports {target} (acceleration): go through {POLICY}"
                )
    assert wrong == []


def test_the_checks_see_function_level_imports_and_cycles(tmp_path):
    """The reader itself: a cycle made by a function-level import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n"
        "    from keras_pcl import training\n"
        "    import importlib\n"
        "    importlib.import_module('keras_pcl.cli')\n"
    )
    names = list(imported_names(str(source), "keras_pcl.m", False))
    assert ("keras_pcl", ("training",)) in names
    assert ("keras_pcl.cli", ()) in names


def test_contributing_shows_the_same_layers():
    with open(os.path.join(ROOT, "CONTRIBUTING.md")) as f:
        text = f.read()
    assert "## Layers" in text
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for layer, prefixes in LAYERS.items():
        assert layer in section, layer
        for prefix in prefixes:
            if prefix == PACKAGE:
                continue
            short = prefix.split(".", 1)[1]
            shown = (f"`{short}`", f"`{short}/`")
            assert any(s in section for s in shown), f"Layers lacks `{short}`"
