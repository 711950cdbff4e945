"""The house rules: rooms import only downwards, the model contract has one owner,
nothing below the CLI prints, and the shipped package holds no benchmark code."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trxsfr"


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_contracts_hold():
    """import-linter's layers, independence and acyclic contracts (pyproject.toml)."""
    lint = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable),
                                                        "lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_contract_names_are_spelled_once():
    """Signature, input, output and asset names appear as string literals only in contract.py
    (`probabilities` is also a key of label's own JSON document, so it is not listed)."""
    names = {"predict_images", "serving_default", "labels.txt", "trxsfr.json", "image_bytes",
             "class_ids"}
    offenders = []
    for path in _sources():
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_nothing_below_the_cli_prints_or_draws_bars():
    offenders = []
    for path in _sources():
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: print")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = getattr(node, "module", None) or ""
                if module == "tqdm" or any(a.name == "tqdm" for a in node.names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: tqdm")
            if isinstance(node, ast.Attribute) and node.attr == "stdout" and \
                    getattr(node.value, "id", None) == "sys":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: sys.stdout")
    assert offenders == []


def test_the_package_ships_no_benchmark_code():
    from setuptools import find_packages

    packages = find_packages(str(ROOT), include=["trxsfr", "trxsfr.*"])
    assert "benchmarks" not in packages and packages, packages
    shipped = [p.name for p in _sources()]
    assert not [n for n in shipped if n.startswith("bench") or "mobilenet" in n], shipped
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert top == ["__init__.py", "__main__.py", "audit_page.py", "base", "cli", "download.py",
                   "explain.py", "info.py", "kit.py", "lite.py", "report.py", "serve", "train",
                   "use"], top


@pytest.mark.parametrize("room", ["base", "train", "use"])
def test_lower_rooms_import_without_tensorflow_side_effects(room):
    """`import trxsfr` and the pure modules load without TensorFlow (seconds saved for
    every flag error and for Python callers that only read a model's files)."""
    pure = {"base": ["trxsfr.base.contract", "trxsfr.base.config", "trxsfr.base.listing"],
            "train": ["trxsfr.train.dataset"], "use": ["trxsfr.use.metrics"]}[room]
    code = ("import sys, trxsfr; " + "; ".join(f"import {m}" for m in pure)
            + "; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
