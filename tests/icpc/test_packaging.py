"""Packaging: the wheel installs one top-level name (``icpc``), and the project's modules import no cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# folder in the repository -> the package it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {"icpc": "icpc", "pipeline": "icpc.pipeline", "training": "icpc.training", "inference": "icpc.inference"}


@pytest.mark.integration
def test_the_wheel_installs_nothing_generic_at_the_top_of_site_packages(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info into the source tree
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "data", "*.egg-info",
                                                            "__pycache__", "notes", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("icpc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"icpc", next(t for t in top if t.endswith(".dist-info"))}, top
    for module in ("icpc/pipeline/job.py", "icpc/pipeline/modalities/image.py", "icpc/training/train.py",
                   "icpc/inference/serve.py", "icpc/demo/run.py", "icpc/storage.py"):
        assert module in names


def module_imports() -> dict[str, set[str]]:
    """{module: project modules it imports}, function-level imports included (AST, nothing executed)."""
    files = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            files[".".join([package, *parts])] = path
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                deps |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_among_the_projects_modules():
    graph = module_imports()
    assert len(graph) > 40 and "icpc.pipeline.modalities.image" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
