"""The package rules of docs/design.md ("Layers and import direction"), checked on the source.

Every ``.py`` file under ``lvmae/``, ``pipelines/`` and ``tune/`` is parsed with :mod:`ast`
(nothing is imported, so the checks are fast and cannot start Ray). The rules:

1. ``lvmae/`` imports neither ``pipelines`` nor ``tune``, and never ``ray``.
2. ``tune/`` does not import ``pipelines``.
3. A ``_private`` name or module of a project package is imported only from a file in the
   same package directory.
4. A project import inside a function or method carries a ``#`` comment giving the reason,
   on the same line or on the line directly above.
5. The graph between the top-level packages has no cycle and points
   ``pipelines → tune → lvmae``.
6. The top level of ``lvmae/`` holds only the support layer (config, tracking, storage,
   progress, errors); everything else lives in a subpackage named for what flows through
   it (``video/``, ``encoders/``, ``mae/``, ``retrieval/``, ``probes/``, ``labels/``).
7. ``lvmae/config.py`` imports no video, encoder, LV-MAE or torch code, so reading a
   config stays light; it may import the plug-in registries (``lvmae.encoders.registry``,
   ``lvmae.probes.kinds``), which it takes its encoder and probe names from.
8. Those registries are plain data: they import only the standard library and
   ``lvmae.errors`` (itself standard library only), and the ``__init__`` of their packages
   imports nothing.

Each failure lists the offenders as ``file:line: import``.
"""

from __future__ import annotations

import ast
import inspect
import io
import itertools
import sys
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lvmae", "tune", "pipelines")
RANK = {"lvmae": 0, "tune": 1, "pipelines": 2}
"""A package may import only packages of lower rank (to its right in the design notes)."""
DYNAMIC_IMPORTERS = ("import_module", "__import__")
SUPPORT_LAYER = frozenset({"__init__", "config", "tracking", "storage", "progress", "errors"})
"""The only modules allowed directly in ``lvmae/`` (rule 6)."""
CONFIG_FILE = "lvmae/config.py"
CONFIG_BANNED = ("lvmae.video", "lvmae.encoders", "lvmae.mae", "torch", "av", "decord")
JOBS = ("extract", "pretrain", "embed", "probe", "search", "monitor")
"""The job modules of ``pipelines/``: none imports another (what several read lives in
``pipelines/job_inputs.py``); the CLI, the stages and the runner compose them."""
"""What ``lvmae/config.py`` must not import (rule 7): modules and their submodules."""
PLUGIN_REGISTRIES = ("lvmae.encoders.registry", "lvmae.probes.kinds")
"""The plug-in registries: plain data that ``lvmae/config.py`` may import (rules 7 and 8)."""
PLAIN_DATA_IMPORTS = ("lvmae.errors",)
"""Project modules a registry may import (rule 8): standard library only themselves."""


@dataclass(frozen=True)
class ImportRef:
    """One import found in a source file.

    Attributes:
        file: repository-relative POSIX path of the importing file.
        line: 1-based line of the import.
        text: the import as written (``from .x import _y`` keeps its dots).
        module: the imported module, absolute and dotted (relative imports resolved; empty
            when a relative import climbs above the top-level package).
        names: the names of a ``from`` import (empty for ``import``).
        in_function: the import sits inside a function or method body.
        has_reason: a ``#`` comment is on one of its lines or on the line directly above.
    """

    file: str
    line: int
    text: str
    module: str
    names: tuple[str, ...]
    in_function: bool
    has_reason: bool

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    @property
    def importer_package(self) -> str:
        """Dotted package (directory) of the importing file."""
        return ".".join(Path(self.file).parent.parts)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


# ------------------------------------------------------------------------------ scanning


def _comment_lines(source: str) -> tuple[set[int], set[int]]:
    """Lines holding a comment token, and lines that hold nothing but a comment."""
    anywhere: set[int] = set()
    only: set[int] = set()
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            anywhere.add(row)
            if lines[row - 1].lstrip().startswith("#"):
                only.add(row)
    return anywhere, only


def _resolve(file: str, module: str | None, level: int) -> str:
    """The absolute dotted module of ``from <level dots><module> import ...`` in ``file``."""
    if level == 0:
        return module or ""
    package = list(Path(file).parent.parts)
    if level - 1 > len(package) - 1:
        return ""  # climbs above the top-level package
    base = package[: len(package) - (level - 1)]
    return ".".join(base + (module.split(".") if module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan_source(file: str, source: str) -> list[ImportRef]:
    """Every import of ``source`` (the text of repository file ``file``): ``import``,
    ``from ... import`` and ``importlib.import_module("...")`` / ``__import__("...")`` with a
    literal name.

    Raises:
        SyntaxError: the source does not parse.
    """
    tree = ast.parse(source, filename=file)
    anywhere, only = _comment_lines(source)
    refs: list[ImportRef] = []

    def reason(node: ast.AST) -> bool:
        lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        return any(n in anywhere for n in lines) or (node.lineno - 1) in only

    def add(node: ast.AST, text: str, module: str, names: tuple[str, ...], in_fn: bool):
        refs.append(ImportRef(file, node.lineno, text, module, names, in_fn, reason(node)))

    def visit(node: ast.AST, in_fn: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                text = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                add(node, text, alias.name, (), in_fn)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(file, node.module, node.level)
            add(node, ast.unparse(node), module, tuple(a.name for a in node.names), in_fn)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                called in DYNAMIC_IMPORTERS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                add(node, ast.unparse(node), first.value, (), in_fn)
        inner = in_fn or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return refs


def source_files(root: Path = ROOT) -> list[Path]:
    """The ``.py`` files of the project packages, sorted."""
    files = []
    for package in PACKAGES:
        files += [p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def package_dirs(root: Path = ROOT) -> set[str]:
    """Dotted names of the directories holding project modules (``lvmae.labels``, ...)."""
    return {".".join(p.parent.relative_to(root).parts) for p in source_files(root)}


@cache
def scan_repository() -> tuple[tuple[ImportRef, ...], tuple[str, ...]]:
    """All imports of the project packages, and ``file: error`` for files that do not parse."""
    refs: list[ImportRef] = []
    errors: list[str] = []
    for path in source_files():
        rel = path.relative_to(ROOT).as_posix()
        try:
            refs += scan_source(rel, path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError) as exc:
            errors.append(f"{rel}: {exc}")
    return tuple(refs), tuple(errors)


# ------------------------------------------------------------------------------ checkers


def forbidden_imports(
    refs: Iterable[ImportRef], package: str, banned: Iterable[str]
) -> list[ImportRef]:
    """Imports made by files of top-level ``package`` whose top-level module is ``banned``."""
    banned = set(banned)
    return [r for r in refs if r.file.split("/")[0] == package and r.top in banned]


def private_cross_imports(refs: Iterable[ImportRef], packages: set[str]) -> list[ImportRef]:
    """Imports of a ``_private`` project name or module from outside its package directory.

    ``packages`` holds the dotted names of the project's package directories; it tells
    whether ``X`` in ``from X import _y`` is a package (``_y`` lives in ``X/``) or a module
    (``_y`` lives next to it).
    """
    bad = []
    for ref in refs:
        if ref.top not in PACKAGES:
            continue
        parts = ref.module.split(".")
        home = None  # the package directory holding the private thing
        for k, part in enumerate(parts):
            if _is_private(part):
                home = ".".join(parts[:k])
                break
        if home is None and any(_is_private(n) for n in ref.names):
            home = ref.module if ref.module in packages else ".".join(parts[:-1])
        if home is not None and home != ref.importer_package:
            bad.append(ref)
    return bad


def unexplained_function_imports(refs: Iterable[ImportRef]) -> list[ImportRef]:
    """Project imports inside a function body with no ``#`` comment giving the reason."""
    return [r for r in refs if r.in_function and r.top in PACKAGES and not r.has_reason]


def package_edges(refs: Iterable[ImportRef]) -> dict[tuple[str, str], list[ImportRef]]:
    """Edges between top-level project packages, each with the imports that make it."""
    edges: dict[tuple[str, str], list[ImportRef]] = {}
    for ref in refs:
        src = ref.file.split("/")[0]
        if ref.top in PACKAGES and src in PACKAGES and ref.top != src:
            edges.setdefault((src, ref.top), []).append(ref)
    return edges


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str]:
    """One cycle of the directed graph as ``[a, b, ..., a]``, or ``[]`` when acyclic."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return []


def edges_against_direction(
    edges: Mapping[tuple[str, str], list[ImportRef]],
) -> dict[tuple[str, str], list[ImportRef]]:
    """The edges that do not point from a package to one of lower rank."""
    return {e: refs for e, refs in edges.items() if RANK[e[0]] <= RANK[e[1]]}


def modules_beyond(names: Iterable[str], allowed: Iterable[str] = SUPPORT_LAYER) -> list[str]:
    """The module names (file stems) of ``names`` that are not ``allowed``, sorted."""
    allowed = set(allowed)
    return sorted(n for n in names if n not in allowed)


def top_level_modules(root: Path = ROOT) -> list[str]:
    """Stems of the ``.py`` files directly in ``lvmae/``."""
    return sorted(p.stem for p in (root / "lvmae").glob("*.py"))


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def imports_within(
    refs: Iterable[ImportRef], file: str, banned: Iterable[str], allowed: Iterable[str] = ()
) -> list[ImportRef]:
    """Imports made by ``file`` of a ``banned`` module or of anything inside it
    (``from lvmae import video`` counts as importing ``lvmae.video``), except imports of an
    ``allowed`` module or of names inside it."""
    banned, allowed = tuple(banned), tuple(allowed)
    bad = []
    for ref in refs:
        if ref.file != file or any(_within(ref.module, a) for a in allowed):
            continue
        targets = [ref.module, *(f"{ref.module}.{n}" for n in ref.names)]
        if any(_within(t, b) for t in targets for b in banned):
            bad.append(ref)
    return bad


def sideways_job_imports(refs: Iterable[ImportRef], jobs: Iterable[str] = JOBS) -> list[ImportRef]:
    """Imports of one job module of ``pipelines/`` by another (``pipelines/probe.py``
    importing ``pipelines.embed``)."""
    jobs = tuple(jobs)
    bad = []
    for ref in refs:
        stem = Path(ref.file).stem
        if ref.file != f"pipelines/{stem}.py" or stem not in jobs:
            continue
        targets = [ref.module, *(f"{ref.module}.{n}" for n in ref.names)]
        if any(_within(t, f"pipelines.{j}") for t in targets for j in jobs if j != stem):
            bad.append(ref)
    return bad


def non_stdlib_imports(
    refs: Iterable[ImportRef], file: str, allowed: Iterable[str] = ()
) -> list[ImportRef]:
    """Imports made by ``file`` of anything beyond the standard library and ``allowed``."""
    allowed = set(allowed)
    return [
        r
        for r in refs
        if r.file == file
        and r.top not in sys.stdlib_module_names
        and r.top != "__future__"
        and r.module not in allowed
    ]


def module_file(module: str) -> str:
    """The repository path of a dotted project module (``lvmae.probes.kinds`` →
    ``lvmae/probes/kinds.py``)."""
    return module.replace(".", "/") + ".py"


# ------------------------------------------------------------------------------ reporting


def _listing(refs: Iterable[ImportRef]) -> str:
    return "\n".join(f"  {r}" for r in refs)


def _edge_listing(edges: Mapping[tuple[str, str], list[ImportRef]]) -> str:
    return "\n".join(f"{a} -> {b}:\n{_listing(refs)}" for (a, b), refs in sorted(edges.items()))


def _refs() -> tuple[ImportRef, ...]:
    return scan_repository()[0]


# ------------------------------------------------------------------------------ the tests


def test_sources_parse():
    files = source_files()
    assert files, f"no project sources found under {ROOT}"
    errors = scan_repository()[1]
    assert not errors, "files that do not parse:\n" + "\n".join(errors)


def test_lvmae_imports_no_ray_pipelines_or_tune():
    bad = forbidden_imports(_refs(), "lvmae", {"ray", "pipelines", "tune"})
    assert not bad, "lvmae/ must not import ray, pipelines or tune:\n" + _listing(bad)


def test_tune_does_not_import_pipelines():
    bad = forbidden_imports(_refs(), "tune", {"pipelines"})
    assert not bad, "tune/ must not import pipelines:\n" + _listing(bad)


def test_no_private_imports_across_packages():
    bad = private_cross_imports(_refs(), package_dirs())
    assert not bad, (
        "private names or modules imported from another package directory (make them public "
        "where they live):\n" + _listing(bad)
    )


def test_function_level_project_imports_give_a_reason():
    bad = unexplained_function_imports(_refs())
    assert not bad, (
        "project imports inside functions without a '#' comment saying why (move them to the "
        "module top, or comment: heavy / optional / ...):\n" + _listing(bad)
    )


def test_package_graph_has_no_cycle():
    edges = package_edges(_refs())
    cycle = find_cycle(edges)
    involved = {e: refs for e, refs in edges.items() if e in set(itertools.pairwise(cycle))}
    assert not cycle, f"import cycle between packages: {' -> '.join(cycle)}\n" + _edge_listing(
        involved
    )


def test_package_graph_points_pipelines_tune_lvmae():
    bad = edges_against_direction(package_edges(_refs()))
    assert not bad, (
        "package imports must point pipelines -> tune -> lvmae; these do not:\n"
        + _edge_listing(bad)
    )


def test_lvmae_top_level_is_the_support_layer():
    names = top_level_modules()
    assert "config" in names, f"no lvmae/config.py under {ROOT}"
    bad = modules_beyond(names)
    assert not bad, (
        "lvmae/ keeps only the support layer (config, tracking, storage, progress, errors) at "
        "its top level; move these into the subpackage of what flows through them (video/, "
        "encoders/, mae/, retrieval/, probes/, labels/):\n"
        + "\n".join(f"  lvmae/{n}.py" for n in bad)
    )


def test_config_imports_no_video_encoder_mae_or_torch():
    bad = imports_within(_refs(), CONFIG_FILE, CONFIG_BANNED, PLUGIN_REGISTRIES)
    assert not bad, (
        f"{CONFIG_FILE} must import nothing from {', '.join(CONFIG_BANNED)} (reading a config "
        "stays light; keep what it needs as a torch-free constant in config, or in a plug-in "
        f"registry: {', '.join(PLUGIN_REGISTRIES)}):\n" + _listing(bad)
    )


def test_jobs_do_not_import_each_other():
    bad = sideways_job_imports(_refs())
    assert not bad, (
        "a job module of pipelines/ imports another job: move what both need into "
        "pipelines/job_inputs.py (or lvmae/):\n" + _listing(bad)
    )


def test_sideways_job_checker():
    sources = {
        "pipelines/probe.py": "from pipelines.embed import x\nfrom pipelines.job_inputs import y\n",
        "pipelines/monitor.py": "from pipelines import search\nimport pipelines.monitor\n",
        "pipelines/cli.py": "from pipelines.probe import run_probe\n",
        "pipelines/stages/probe.py": "from pipelines.probe import run_probe\n",
    }
    refs = _synthetic_refs(sources)
    assert _lines(sideways_job_imports(refs)) == [
        ("pipelines/monitor.py", 1),
        ("pipelines/probe.py", 1),
    ]


def test_plugin_registries_are_plain_data():
    refs = _refs()
    for registry in PLUGIN_REGISTRIES:
        file = module_file(registry)
        assert (ROOT / file).is_file(), f"no {file} under {ROOT}"
        bad = non_stdlib_imports(refs, file, PLAIN_DATA_IMPORTS)
        package_init = module_file(registry.rsplit(".", 1)[0] + ".__init__")
        bad += [r for r in refs if r.file == package_init and r.module != "__future__"]
        assert not bad, (
            f"{registry} is read by lvmae/config.py: it imports only the standard library and "
            f"{', '.join(PLAIN_DATA_IMPORTS)}, and its package's __init__ imports nothing:\n"
            + _listing(bad)
        )
    for module in PLAIN_DATA_IMPORTS:
        bad = non_stdlib_imports(refs, module_file(module))
        assert not bad, f"{module} is imported by the registries: standard library only:\n" + (
            _listing(bad)
        )


# ------------------------------------------------------------------------------ self-checks

_SYNTHETIC = {
    "lvmae/x.py": (
        "import ray.data\n"
        "from pipelines.run import _y\n"
        "from tune import sweep\n"
        "\n"
        "def f():\n"
        "    from lvmae.mae.model import LVMAE\n"
        "    return LVMAE\n"
    ),
    "tune/sweep.py": (
        "from lvmae.probes.results import _row\n"
        "import lvmae.labels._impl\n"
        "from pipelines import probe\n"
    ),
    "lvmae/probes/train.py": "from ..labels import _split\n",
}
_SYNTHETIC_PACKAGES = {"lvmae", "lvmae.labels", "lvmae.probes", "pipelines", "tune"}


def _synthetic_refs(sources: Mapping[str, str]) -> list[ImportRef]:
    return [ref for file, src in sources.items() for ref in scan_source(file, src)]


def _lines(bad: Iterable[ImportRef]) -> list[tuple[str, int]]:
    return sorted((r.file, r.line) for r in bad)


def test_checkers_flag_violations():
    refs = _synthetic_refs(_SYNTHETIC)
    assert _lines(forbidden_imports(refs, "lvmae", {"ray", "pipelines", "tune"})) == [
        ("lvmae/x.py", 1),
        ("lvmae/x.py", 2),
        ("lvmae/x.py", 3),
    ]
    assert _lines(forbidden_imports(refs, "tune", {"pipelines"})) == [("tune/sweep.py", 3)]
    assert _lines(private_cross_imports(refs, _SYNTHETIC_PACKAGES)) == [
        ("lvmae/probes/train.py", 1),
        ("lvmae/x.py", 2),
        ("tune/sweep.py", 1),
        ("tune/sweep.py", 2),
    ]
    relative = next(r for r in refs if r.file == "lvmae/probes/train.py")
    assert relative.module == "lvmae.labels"
    assert str(relative) == "lvmae/probes/train.py:1: from ..labels import _split"
    assert _lines(unexplained_function_imports(refs)) == [("lvmae/x.py", 6)]

    edges = package_edges(refs)
    assert set(edges) == {
        ("lvmae", "pipelines"),
        ("lvmae", "tune"),
        ("tune", "pipelines"),
        ("tune", "lvmae"),
    }
    assert set(edges_against_direction(edges)) == set(edges) - {("tune", "lvmae")}
    assert find_cycle(edges) == ["lvmae", "tune", "lvmae"]
    assert find_cycle([("pipelines", "tune"), ("tune", "lvmae"), ("lvmae", "pipelines")]) == [
        "lvmae",
        "pipelines",
        "tune",
        "lvmae",
    ]


def test_checkers_accept_the_allowed_forms():
    sources = {
        "lvmae/labels/lvu.py": (
            "from lvmae.labels.format import _helper\n"
            "from .format import _other\n"
            "from . import _impl\n"
            "from lvmae import __version__\n"
            "import ray_like_name\n"
            "\n"
            "def f():\n"
            "    # heavy: torch\n"
            "    from lvmae.mae.model import LVMAE\n"
            "    from lvmae.mae.masking import make_mask  # optional\n"
            "    import json\n"
            "    return LVMAE, make_mask, json\n"
        ),
        "pipelines/cli.py": (
            "from pipelines.run import _x\n"
            "from tune.sweep import run_tune\n"
            "from lvmae.config import load_config\n"
            "from ray import tune\n"
        ),
        "tune/sweep.py": "from lvmae.probes import ProbeConfig\n",
    }
    refs = _synthetic_refs(sources)
    assert forbidden_imports(refs, "lvmae", {"ray", "pipelines", "tune"}) == []
    assert forbidden_imports(refs, "tune", {"pipelines"}) == []
    assert private_cross_imports(refs, _SYNTHETIC_PACKAGES) == []
    assert unexplained_function_imports(refs) == []
    edges = package_edges(refs)
    assert set(edges) == {("pipelines", "tune"), ("pipelines", "lvmae"), ("tune", "lvmae")}
    assert edges_against_direction(edges) == {}
    assert find_cycle(edges) == []


def test_support_layer_and_config_checkers():
    assert modules_beyond(["__init__", "config", "errors", "model", "samples"]) == [
        "model",
        "samples",
    ]
    assert modules_beyond(sorted(SUPPORT_LAYER)) == []
    sources = {
        "lvmae/config.py": (
            "import torch.nn\n"
            "from lvmae.video.samples import RECIPES\n"
            "from lvmae import mae\n"
            "from lvmae.encoders import specs\n"
            "from lvmae.errors import LvmaeError\n"
            "import avocado\n"
            "from lvmae.videos import x\n"
            "\n"
            "def f():\n"
            "    import decord  # optional\n"
        ),
        "lvmae/storage.py": "import torch\n",
        "lvmae/probes/kinds.py": (
            "from dataclasses import dataclass\nimport numpy\nfrom lvmae.errors import E\n"
        ),
    }
    refs = _synthetic_refs(sources)
    assert _lines(non_stdlib_imports(refs, "lvmae/probes/kinds.py")) == [
        ("lvmae/probes/kinds.py", 2),
        ("lvmae/probes/kinds.py", 3),
    ]
    assert _lines(non_stdlib_imports(refs, "lvmae/probes/kinds.py", PLAIN_DATA_IMPORTS)) == [
        ("lvmae/probes/kinds.py", 2)
    ]
    registry_import = _synthetic_refs(
        {CONFIG_FILE: "from lvmae.encoders.registry import ENCODER_NAMES\n"}
    )
    assert imports_within(registry_import, CONFIG_FILE, CONFIG_BANNED)  # banned by default
    assert not imports_within(registry_import, CONFIG_FILE, CONFIG_BANNED, PLUGIN_REGISTRIES)
    assert _lines(imports_within(refs, CONFIG_FILE, CONFIG_BANNED)) == [
        ("lvmae/config.py", 1),
        ("lvmae/config.py", 2),
        ("lvmae/config.py", 3),
        ("lvmae/config.py", 4),
        ("lvmae/config.py", 10),
    ]


MAX_FUNCTION_LINES = 100


def long_functions(file: str, source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line: name (N lines)`` for every function or method longer than ``limit``
    lines (decorators and docstring included)."""
    out = []
    for node in ast.walk(ast.parse(source, filename=file)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > limit:
                out.append(f"{file}:{node.lineno}: {node.name} ({length} lines)")
    return out


def test_no_function_is_longer_than_100_lines():
    bad = []
    for path in source_files():
        bad += long_functions(str(path.relative_to(ROOT)), path.read_text())
    assert not bad, "functions over 100 lines:\n" + "\n".join(bad)
    assert long_functions("x.py", "def f():\n" + "    x = 1\n" * 120)  # the check can fail


# ------------------------------------------------------------------------------ one door per job

JOB_ENTRY_POINTS = {
    "run_extraction": "pipelines/stages/extract.py",
    "run_pretrain": "pipelines/stages/pretrain.py",
    "run_probe": "pipelines/stages/probe.py",
    "run_sweep": "pipelines/stages/tune.py",
}
"""Each job that is a stage of the main job, and the one module allowed to start it: its
stage. The ``lvmae`` commands and ``lvmae run`` both reach the job through that stage."""

COMMAND_STAGES = {"extract": "ExtractStage", "pretrain": "PretrainStage",
                  "probe": "ProbeStage", "tune": "TuneStage"}  # fmt: skip


def job_calls(root: Path = ROOT) -> dict[str, list[str]]:
    """Where each of :data:`JOB_ENTRY_POINTS` is called in the packages: name → files."""
    found: dict[str, list[str]] = {name: [] for name in JOB_ENTRY_POINTS}
    for path in source_files(root):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in found:
                    found[name].append(path.relative_to(root).as_posix())
    return found


def test_each_job_has_one_door():
    """The stage jobs are started only by their stage (no second code path), and each
    ``lvmae`` command of a stage job runs that stage (walks the CLI's commands)."""
    for name, files in job_calls().items():
        assert files == [JOB_ENTRY_POINTS[name]], (
            f"{name} is started from {files}: only {JOB_ENTRY_POINTS[name]} may start it "
            "(commands go through the stage with pipelines.run.run_alone)"
        )
    import click

    import pipelines.cli
    from pipelines.cli import cli

    # the CLI's own helpers that run a stage alone (e.g. one for both probing commands)
    doors = ["run_alone"] + [
        name for name, fn in inspect.getmembers(pipelines.cli, inspect.isfunction)
        if fn.__module__ == "pipelines.cli" and "run_alone(" in inspect.getsource(fn)
    ]  # fmt: skip
    for command, stage in COMMAND_STAGES.items():
        callback = cli.commands[command].callback
        source = inspect.getsource(callback)
        assert stage in source and any(f"{door}(" in source for door in doors), (
            f"`lvmae {command}` must run {stage} through pipelines.run.run_alone"
        )
    assert isinstance(cli, click.Group)
