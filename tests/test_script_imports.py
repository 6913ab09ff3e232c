"""The experiment and benchmark scripts import names that exist (they are not run by the suite)."""

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted(Path("experiments").glob("*.py")) + sorted(Path("benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_script_imports_resolve(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trajdistill"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{node.module}.{alias.name}")
    assert not missing, f"{script}: {missing}"
