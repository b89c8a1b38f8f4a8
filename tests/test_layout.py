"""The package's layout reads as the pipeline: no import runs back up it, module docstrings stay
short (the long explanations live in docs/), and nothing cites a file outside the repository."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# layer of each part of the package; a module may import its own part and lower layers only
LAYERS = {
    "seemrl.io": 0, "seemrl.config": 0,
    "seemrl.data": 1,
    "seemrl.training": 2,
    "seemrl.algos": 3,
    "seemrl.train": 4, "seemrl.generate": 4, "seemrl.analysis": 4, "seemrl.theory": 4, "seemrl.theory.cli": 6,
    "seemrl.report": 5,
    "seemrl.cli": 6, "seemrl.status": 6, "seemrl.workflow": 6, "seemrl.__main__": 6, "seemrl": 6,
}


def part(module: str) -> str:
    """The entry of LAYERS a module belongs to (its longest matching prefix)."""
    names = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    assert names, f"{module} is in no layer: add it to LAYERS"
    return max(names, key=len)


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every seemrl module `path` imports, at any depth (function-level and TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("seemrl")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("seemrl"):
            for a in node.names:  # `from seemrl.x import y`: y may itself be a module
                full = f"{node.module}.{a.name}"
                candidate = SRC / Path(*full.split("."))
                found.add(full if candidate.with_suffix(".py").exists() or candidate.is_dir() else node.module)
    return found


MODULES = sorted(SRC.joinpath("seemrl").rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        part(module_name(path))


def back_edges(modules: dict[str, set[str]]) -> list[str]:
    """Each import of `modules` (module -> what it imports) that runs back up the pipeline."""
    edges = []
    for me, targets in modules.items():
        for target in sorted(targets):
            mine, theirs = part(me), part(target)
            # up a layer, or across parts of one layer below the entry points (6)
            if mine != theirs and (LAYERS[theirs] > LAYERS[mine] or LAYERS[theirs] == LAYERS[mine] < 6):
                edges.append(f"{me} (layer {LAYERS[mine]}) imports {target} (layer {LAYERS[theirs]})")
    return edges


def test_no_import_runs_back_up_the_pipeline():
    assert back_edges({module_name(p): imports(p) for p in MODULES}) == []


def test_the_check_sees_a_back_edge(tmp_path):
    """What the check reports: an import up a layer (evaluation needing an algorithm, as it once
    did), across two parts of one layer (analysis needing training's orchestration)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from seemrl.algos.td3 import TD3Nets\n    from seemrl.train import train_offline\n")
    found = imports(probe)
    assert found == {"seemrl.algos.td3", "seemrl.train"}
    assert back_edges({"seemrl.training.evaluation": found, "seemrl.analysis.seem": {"seemrl.train"}}) == [
        "seemrl.training.evaluation (layer 2) imports seemrl.algos.td3 (layer 3)",
        "seemrl.training.evaluation (layer 2) imports seemrl.train (layer 4)",
        "seemrl.analysis.seem (layer 4) imports seemrl.train (layer 4)"]


def test_no_algorithm_is_another_ones_base():
    """Editing one algorithm's file reruns only its own training jobs: no other module of the
    training stage imports it (the workflow lists algos/<trainer>.py and algos/base.py)."""
    for path in MODULES:
        me = module_name(path)
        for target in imports(path):
            if target.startswith("seemrl.algos.") and target not in ("seemrl.algos.base",):
                assert me in (target, "seemrl.algos") or not me.startswith(("seemrl.algos", "seemrl.training")), \
                    f"{me} imports {target}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_docstrings_are_short(path):
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    assert len(doc.splitlines()) <= 15, f"{path}: {len(doc.splitlines())} lines; move the explanation to docs/"


def test_nothing_cites_a_file_outside_the_repository():
    pattern = re.compile(r"REFERENCE\.md|REFERENCE §|task brief|\.\./shared|shared/(REFERENCE|probes|recipes|paper)")
    cited = []
    for folder in ("src", "config", "workflow", "benchmarks", "docs", "envs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".smk", ".yaml", ".md", ".txt") and \
                    pattern.search(path.read_text(errors="replace")):
                cited.append(str(path.relative_to(ROOT)))
    for name in ("README.md", "Snakefile"):
        if pattern.search((ROOT / name).read_text()):
            cited.append(name)
    assert cited == []
