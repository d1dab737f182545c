"""The public API: ``headwater.__all__``, docstrings with examples, a core without plugins.

STYLE.md rules 17 (explicit re-exports, sorted and complete ``__all__``, a docstring with
an example on every public name) and 21 (the core imports no plugin).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from fixtures.plugin_dists import plugin_env

import headwater
from headwater import errors, events, hookspecs, runtime

INIT = Path(headwater.__file__)


def isort_key(name: str) -> tuple[int, str]:
    """``__all__`` order: CONSTANTS, then Classes, then functions and modules (ruff's isort)."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


def defined_in(path: Path) -> dict[str, ast.stmt]:
    """Top-level names a module file binds (imports, assignments, defs) -> the statement."""
    names: dict[str, ast.stmt] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
    return names


def attribute_docstring(module_name: str, name: str) -> str | None:
    """The string literal right after ``name = ...`` where ``name`` is really defined.

    Follows ``from x import name`` re-exports to the defining module.
    """
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    body = ast.parse(Path(module.__file__).read_text(encoding="utf-8")).body
    for i, node in enumerate(body):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return attribute_docstring(node.module, alias.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            following = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                return following.value.value
            return None
    return None


def docstring(module: types.ModuleType, name: str) -> str | None:
    """The documentation of ``module.name``: its own docstring, never an inherited one."""
    value = getattr(module, name)
    if inspect.isclass(value):
        doc = value.__dict__.get("__doc__")
        return doc if isinstance(doc, str) else None
    if (
        inspect.ismodule(value)
        or inspect.isroutine(value)
        or isinstance(value, functools._lru_cache_wrapper)
    ):
        return value.__doc__
    return attribute_docstring(module.__name__, name)  # constants, marker objects


def has_example(doc: str | None) -> bool:
    return doc is not None and ("Example" in doc or ">>>" in doc)


def missing_example(where: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(
        strict=True, reason=f"docstring without an example; add one in {where}"
    )


# -- headwater.__all__ -----------------------------------------------------------------------


def test_all_is_sorted_without_duplicates() -> None:
    assert headwater.__all__ == sorted(headwater.__all__, key=isort_key)
    assert len(set(headwater.__all__)) == len(headwater.__all__)


def test_all_is_complete() -> None:
    public = {name for name in defined_in(INIT) if not name.startswith("_")}
    assert set(headwater.__all__) == public
    # Nothing public appears at run time either, except submodules the import system
    # attaches to the package (headwater.events after `import headwater.events`).
    # (`@py_builtins` and friends: pytest rewrites the asserts of its plugins' packages.)
    for name, value in vars(headwater).items():
        if name.startswith("_") or not name.isidentifier() or name in headwater.__all__:
            continue
        if value is importlib.import_module("__future__").annotations:
            continue
        assert inspect.ismodule(value) and value.__name__ == f"headwater.{name}", name


def test_every_name_in_all_exists_and_star_import_gives_exactly_all() -> None:
    for name in headwater.__all__:
        getattr(headwater, name)
    namespace: dict[str, Any] = {}
    exec("from headwater import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(headwater.__all__)


def test_init_only_re_exports_explicitly() -> None:
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    stars = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
    ]
    assert stars == []


@pytest.mark.parametrize("module", [errors, events, runtime, hookspecs], ids=lambda m: m.__name__)
def test_module_all_names_exist(module: types.ModuleType) -> None:
    assert module.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


# -- docstrings with examples ----------------------------------------------------------------

KNOWN_WITHOUT_EXAMPLE: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=missing_example(KNOWN_WITHOUT_EXAMPLE[n]))
        if n in KNOWN_WITHOUT_EXAMPLE
        else n
        for n in headwater.__all__
    ],
)
def test_public_name_has_a_docstring_with_an_example(name: str) -> None:
    doc = docstring(headwater, name)
    assert doc, f"headwater.{name} has no docstring"
    assert has_example(doc), f"headwater.{name}: docstring has no 'Example' or '>>>'"


def public_functions_and_classes(module: types.ModuleType) -> list[str]:
    names = set(getattr(module, "__all__", ()))
    names.update(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    )
    return sorted(
        name
        for name in names
        if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name))
    )


KNOWN_FUNCTIONS_WITHOUT_EXAMPLE: dict[str, str] = {}


@pytest.mark.parametrize(
    "qualname",
    [
        pytest.param(q, marks=missing_example(KNOWN_FUNCTIONS_WITHOUT_EXAMPLE[q]))
        if q in KNOWN_FUNCTIONS_WITHOUT_EXAMPLE
        else q
        for module in (errors, events, runtime, hookspecs)
        for q in (f"{module.__name__}.{n}" for n in public_functions_and_classes(module))
    ],
)
def test_public_function_or_class_has_a_docstring_with_an_example(qualname: str) -> None:
    module_name, name = qualname.rsplit(".", 1)
    doc = docstring(importlib.import_module(module_name), name)
    assert doc, f"{qualname} has no docstring"
    assert has_example(doc), f"{qualname}: docstring has no 'Example' or '>>>'"


def test_hookimpl_is_re_exported_and_documented() -> None:
    assert headwater.hookimpl is hookspecs.hookimpl
    assert hookspecs.hookimpl.project_name == hookspecs.PROJECT_NAME == "headwater"
    assert has_example(attribute_docstring("headwater.hookspecs", "hookspec"))


HOOKS = [name for name in hookspecs.__all__ if name.startswith("headwater_")]


def test_every_hook_function_is_a_listed_hookspec() -> None:
    defined = [
        name
        for name, value in vars(hookspecs).items()
        if name.startswith("headwater_") and inspect.isfunction(value)
    ]
    assert sorted(defined) == sorted(HOOKS)
    for name in HOOKS:
        assert hasattr(getattr(hookspecs, name), "headwater_spec"), f"{name} is not a @hookspec"


@pytest.mark.parametrize("hook_name", HOOKS)
def test_hookspec_docstring_says_when_it_is_called_and_shows_an_example(hook_name: str) -> None:
    spec = getattr(hookspecs, hook_name)
    doc = inspect.getdoc(spec)
    assert doc is not None
    assert "**Called:** once" in doc  # once per manager / run / task / step: never per event
    assert "Example" in doc
    assert "**Returns:**" in doc and "**Async:**" in doc
    parameters = list(inspect.signature(spec).parameters)
    if parameters:
        described = doc.split("**Parameters:**", 1)[1]
        assert all(f"``{p}``" in described for p in parameters), parameters


# -- the core imports no plugin ------------------------------------------------------------

NO_PLUGINS = """
import json
import sys
from typing import TypedDict

import headwater
from headwater._plugins import get_plugin_manager

report = {
    "manager_built_at_import": get_plugin_manager.cache_info().currsize != 0,
    "after_import": sorted(m for m in sys.modules if m.startswith("headwater_")),
}
if sys.argv[1] == "run":

    class State(TypedDict):
        n: int

    async def double(state):
        return {"n": state["n"] * 2}

    graph = headwater.StateGraph(State)
    graph.add_node("double", double)
    graph.add_edge(headwater.START, "double")
    graph.add_edge("double", headwater.END)
    report["result"] = graph.compile().invoke({"n": 21})
    report["after_run"] = sorted(m for m in sys.modules if m.startswith("headwater_"))
    report["plugins"] = sorted(
        name for name, plugin in get_plugin_manager().list_name_plugin() if plugin is not None
    )
print(json.dumps(report))
"""


def run_python(code: str, arg: str, load: str | None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, arg],
        env=plugin_env(load=load),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_core_with_plugins_disabled_loads_no_plugin_module() -> None:
    report = run_python(NO_PLUGINS, "run", load="")  # HEADWATER_LOAD_PLUGINS=
    assert report == {
        "manager_built_at_import": False,
        "after_import": [],
        "result": {"n": 42},
        "after_run": [],
        "plugins": ["headwater.checkpointers", "headwater.cli"],
    }


def test_importing_the_core_loads_no_plugin_even_when_plugins_are_enabled() -> None:
    report = run_python(NO_PLUGINS, "import", load=None)  # nothing happens at import time
    assert report == {"manager_built_at_import": False, "after_import": []}


def test_the_errors_tree_in_the_module_docstring_names_every_error() -> None:
    doc = errors.__doc__ or ""
    tree = doc[doc.index("HeadwaterError\n") :]
    missing = [
        name for name in errors.__all__ if f" {name}" not in tree and name != "HeadwaterError"
    ]
    assert not missing, f"add {missing} to the tree in headwater/errors.py's docstring"
