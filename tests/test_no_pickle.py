"""No code path deserialises with pickle: every ``torch.load`` passes ``weights_only=True``,
every ``np.load`` ``allow_pickle=False``, and no pickle-family module is imported (an index
folder, checkpoint or upload from someone else must never run code when it is read)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TREES = ("afmrl", "jobs", "serve_apps", "scripts", "bench")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal", "ray.cloudpickle"}
# Calls that unpickle (or run code) whatever they are given.
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pd.read_pickle", "pandas.read_pickle",
                "yaml.load", "yaml.unsafe_load", "yaml.full_load", "joblib.load",
                "dill.load", "dill.loads", "shelve.open", "marshal.load", "marshal.loads",
                "cloudpickle.load", "cloudpickle.loads", "Unpickler"}
# (file, module): uses that serialise our own code, never read untrusted bytes.
ALLOWED_IMPORTS = {
    # Ships the app's module to Serve replicas by value (Ray's own transport, not user input).
    ("afmrl/serve/launch.py", "ray.cloudpickle"),
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def unsafe_uses(source: str, path: str) -> list[str]:
    """``path:line: what`` for each pickle import or unpickling call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for module in modules:
            if module in PICKLE_MODULES and (path, module) not in ALLOWED_IMPORTS:
                found.append(f"{path}:{node.lineno}: imports {module}")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in UNSAFE_CALLS or name.split(".")[-1] in {"Unpickler", "read_pickle"}:
            found.append(f"{path}:{node.lineno}: calls {name}")
        if name.endswith("torch.load") and _keyword(node, "weights_only") is not True:
            found.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
        if name in {"np.load", "numpy.load"} and _keyword(node, "allow_pickle") is not False:
            found.append(f"{path}:{node.lineno}: np.load without allow_pickle=False")
    return found


def test_the_tree_never_unpickles():
    files = [p for tree in TREES for p in sorted((REPO / tree).rglob("*.py"))]
    assert len(files) > 50  # the trees were found
    found = [use for p in files
             for use in unsafe_uses(p.read_text(), p.relative_to(REPO).as_posix())]
    assert found == []


@pytest.mark.parametrize("source", [
    "import pickle", "from pickle import loads", "import dill as d",
    "torch.load(path)", "torch.load(path, weights_only=False)", "np.load(f)",
    "numpy.load(f, allow_pickle=True)", "pd.read_pickle(p)", "yaml.load(text)",
    "import ray.cloudpickle",
])
def test_the_scanner_finds_each_unsafe_form(source):
    assert unsafe_uses(source, "afmrl/x.py")


@pytest.mark.parametrize("source", [
    "torch.load(path, weights_only=True)", "np.load(f, allow_pickle=False)",
    "yaml.safe_load(text)", "import json",
])
def test_the_scanner_accepts_the_safe_forms(source):
    assert unsafe_uses(source, "afmrl/x.py") == []
