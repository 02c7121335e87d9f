"""One error family: every project exception derives from LvmaeError and is raised somewhere;
the CLI turns any of them into `error: ...` and exit 1."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from lvmae.config import ConfigError
from lvmae.errors import LvmaeError
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for pkg in ("lvmae", "pipelines", "tune") for p in (ROOT / pkg).rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _error_classes() -> list[tuple[str, type]]:
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        if not names:
            continue
        module = importlib.import_module(_module(path))
        for name in names:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                found.append((f"{_module(path)}.{name}", obj))
    return found


ERRORS = _error_classes()


def test_the_project_defines_errors():
    names = {name.rsplit(".", 1)[1] for name, _ in ERRORS}
    assert {"ConfigError", "LabelsError", "StageError", "ClusterError"} <= names


@pytest.mark.parametrize(("name", "cls"), ERRORS, ids=[n for n, _ in ERRORS])
def test_every_error_is_an_lvmae_error_and_is_raised(name, cls):
    assert issubclass(cls, LvmaeError), f"{name} does not derive from LvmaeError"
    if cls is LvmaeError:
        return
    short = name.rsplit(".", 1)[1]
    raised = re.compile(rf"raise {short}\b")
    hits = [p for p in SOURCES if raised.search(p.read_text())]
    assert hits, f"nothing raises {short}: remove it"


def test_the_cli_maps_the_base_class_to_exit_1(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["run", "--config", str(tmp_path / "missing.yaml")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: run config file not found") and "Traceback" not in err
    assert issubclass(ConfigError, LvmaeError) and issubclass(ConfigError, ValueError)
