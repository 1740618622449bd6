"""The house rules of docs/ARCHITECTURE.md, checked from the code's own imports (``ast``, nothing is run):
the pipeline's stages import only earlier stages, the kernels know nothing of nerfbs, the torch twins
import no Taichi, only the CLI touches the console, no import cycle, no file over 400 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# The pipeline in order: a module may import its own stage and earlier ones, never a later one.
STAGES = [
    {"nerfbs", "nerfbs.config", "nerfbs.errors", "nerfbs.atomic", "nerfbs.images", "nerfbs.progress"},
    {"nerfbs.data"},
    {"nerfbs.synth", "nerfbs.preprocess"},
    {"nerfbs.field", "nerfbs.fused_mlp"},
    {"nerfbs.render"},
    {"nerfbs.train"},
    {"nerfbs.evaluate"},
    {"nerfbs.export"},
    {"nerfbs.viewer", "nerfbs.demo", "nerfbs.commands", "nerfbs.console"},
]
CONSOLE_OWNERS = {"cli", "nerfbs.console"}


def _modules() -> dict[str, Path]:
    files = [ROOT / "cli.py", *sorted((ROOT / "nerfbs").rglob("*.py")), *sorted((ROOT / "taichi_kernels").rglob("*.py"))]
    out = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (top level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return names


def _stage(module: str) -> int | None:
    for rank, members in enumerate(STAGES):
        if any(module == m or module.startswith(m + ".") for m in members if m != "nerfbs") or module in members:
            return rank
    return None


def test_every_nerfbs_module_has_a_stage():
    assert [m for m in MODULES if m.startswith("nerfbs") and _stage(m) is None] == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("nerfbs")))
def test_nothing_imports_a_later_stage(module):
    own = _stage(module)
    later = sorted(name for name in _imports(MODULES[module])
                   if name.startswith("nerfbs") and (_stage(name) or 0) > own)
    assert later == [], f"{module} (stage {own}) imports later stages: {later}"


def test_kernels_know_nothing_of_nerfbs_and_twins_no_taichi():
    for module, path in MODULES.items():
        if module.startswith("taichi_kernels"):
            names = _imports(path)
            assert not any(n.startswith("nerfbs") for n in names), module
            if module.startswith("taichi_kernels.reference"):
                top_level = {n for n in names if n == "taichi" or n.startswith("taichi.")}
                assert top_level == set(), f"{module} imports Taichi: {top_level}"


def test_only_the_cli_touches_the_console():
    offenders = sorted(m for m, path in MODULES.items() if m not in CONSOLE_OWNERS
                       and any(n.split(".")[0] in ("rich", "typer") for n in _imports(path)))
    assert offenders == []


def test_no_import_cycle():
    graph = {m: {n for n in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(n):] + [n]))
            if n not in state:
                visit(n, trail + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_file_over_400_lines():
    files = [*MODULES.values(), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
