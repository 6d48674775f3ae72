"""The layout's one rule, checked on the source: imports flow scripts -> utils -> {models, data}, with no cycles.

Every import statement counts, function-local ones included: an import deferred into a function still ties the
two modules together.
"""
import ast
import os

import pytest

from conftest import ROOT

PACKAGES = ("data", "models", "utils")
# the sample world (the demo's and the tests' generated data) is tooling beside the production packages: it may use
# them, none of them may use it
TOOLING = ("sample_world",)
SCRIPTS = ("download_images", "parselabelfile", "combinelabels", "traintest")
# what each layer may import from the project
ALLOWED = {"data": {"data"}, "models": {"models"}, "utils": {"utils", "data", "models"},
           "sample_world": {"sample_world", "utils", "data", "models"}}


def project_modules():
    """{module name: file path} for the scripts, every module of the three packages and of the tooling."""
    modules = {name: os.path.join(ROOT, name + ".py") for name in SCRIPTS}
    for package in PACKAGES + TOOLING:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for f in files:
                if f.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, f)
    return modules


def imports(name, path, modules):
    """[(imported project module, line)] of every import statement in the file, resolved to the deepest module."""
    is_package = path.endswith("__init__.py")
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                found.append((target, node.lineno))
    return found


@pytest.fixture(scope="module")
def graph():
    modules = project_modules()
    return {name: imports(name, path, modules) for name, path in modules.items()}, modules


def test_imports_flow_scripts_to_utils_to_models_and_data(graph):
    edges, modules = graph
    assert {"data.errors", "data.transforms", "models.factory", "utils.checkpoint"} <= set(modules)
    wrong = []
    for name, targets in edges.items():
        layer = name.split(".")[0]
        for target, line in targets:
            allowed = ALLOWED.get(layer, set(PACKAGES) | set(SCRIPTS))
            if target.split(".")[0] not in allowed or (layer in PACKAGES + TOOLING and target in SCRIPTS):
                wrong.append(f"{os.path.relpath(modules[name], ROOT)}:{line} imports {target}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_no_import_cycles(graph):
    edges, modules = graph
    state, stack, cycles = {}, [], []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target, _ in edges[name]:
            if target == name:
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    # The walk must catch what the rule is about, or the two tests above could not fail.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from utils import metrics\n    from . import dataset\n")
    found = imports("data.m", str(path), {"data.m": "", "data.dataset": "", "utils": "", "utils.metrics": ""})
    assert found == [("utils.metrics", 2), ("data.dataset", 3)]


# The README's layout section: a tree, one line per file, `name.py` (or `folder/`) indented two spaces a level, its
# description from column 26 on. Every module of the scripts, packages, tooling and benchmarks is on it.
DOCUMENTED = PACKAGES + TOOLING + ("benchmarks",)


def readme_layout(text):
    """{path: description} of the files the README's "Code layout" block lists."""
    block = text.split("### Code layout", 1)[1].split("```", 2)[1]
    listed, folders = {}, []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent >= 24:  # a description running on
            continue
        name, _, description = line.strip().partition(" ")
        folders = folders[:indent // 2]
        listed["/".join([*folders, name])] = description.strip()
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return listed


def source_files():
    files = {f"{name}.py" for name in SCRIPTS}
    for package in DOCUMENTED:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            files |= {os.path.relpath(os.path.join(folder, n), ROOT).replace(os.sep, "/") for n in names
                      if n.endswith(".py") and n != "__init__.py"}
    return files


def test_the_readme_lists_every_module_and_no_module_that_is_gone():
    listed = readme_layout(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    files = source_files()
    assert not sorted(files - set(listed)), "modules missing from the README's layout section"
    assert not sorted(p for p in listed if p.endswith(".py") and p not in files), "listed but not there"
    assert not [p for p, description in listed.items() if not description], "listed without a description"


def test_the_layout_reader_sees_nesting_and_skips_descriptions():
    text = ("### Code layout\n```\ntop.py                   a script\ndata/                    a package\n"
            "  a.py                   first line of a\n                         b.py would be a description here\n"
            "  sub/                   a subpackage\n    b.py                 in sub\n  c.py                   back up\n```\n")
    assert readme_layout(text) == {"top.py": "a script", "data/": "a package", "data/a.py": "first line of a",
                                   "data/sub/": "a subpackage", "data/sub/b.py": "in sub", "data/c.py": "back up"}
