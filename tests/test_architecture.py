"""The layering and the module map of docs/architecture.md, checked on the source.

Layers, bottom up: `protocol` with the shared leaf modules (`paths`, `atomic`,
`control`, the `tether` package itself), then `node` and `net`, then `claim`
and `agent`, then `cloud`. A module may import its own layer or one below.
`claim` never imports `agent`; `agent` imports `claim` only from its entry
points (`tether-agent -W "claim …"`, `tether-cli doctor`), as the map says.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "tether"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

LAYER = {
    "tether": 0,
    "protocol": 0,
    "paths": 0,
    "atomic": 0,
    "control": 0,
    "node": 1,
    "net": 1,
    "claim": 2,
    "agent": 2,
    "cloud": 3,
}
# The only modules of `agent` that may import `claim` (docs/architecture.md).
AGENT_ENTRY_POINTS = {"agent/main.py", "agent/cli.py"}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _area(dotted: str) -> str:
    """`tether.cloud.link.endpoint` -> `cloud`; `tether` -> `tether`."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    """Every `tether…` module the file imports, relative imports resolved."""
    package = ".".join(path.relative_to(SRC.parent).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return {name for name in found if name == "tether" or name.startswith("tether.")}


def _area_of_file(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in _modules():
        own = _area_of_file(path)
        if path.name == "__init__.py" and path.parent == SRC:
            own = "tether"
        assert own in LAYER, f"{path.relative_to(SRC)}: new area {own!r}, add it to LAYER"
        for name in sorted(_imports(path)):
            if LAYER[_area(name)] > LAYER[own]:
                wrong.append(f"{path.relative_to(SRC)} imports {name}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_claim_and_agent_do_not_import_each_other() -> None:
    wrong = []
    for path in _modules():
        rel = path.relative_to(SRC).as_posix()
        own = _area_of_file(path)
        for name in sorted(_imports(path)):
            if own == "claim" and _area(name) == "agent":
                wrong.append(f"{rel} imports {name}")
            if own == "agent" and _area(name) == "claim" and rel not in AGENT_ENTRY_POINTS:
                wrong.append(f"{rel} imports {name} (only {sorted(AGENT_ENTRY_POINTS)} may)")
    assert not wrong, "claim and agent import each other:\n" + "\n".join(wrong)


def test_the_leaf_modules_import_nothing_of_tether() -> None:
    # protocol, paths, atomic and control are used by every side; they stay free
    # of each other so any of them can move without the rest.
    wrong = []
    for path in _modules():
        own = _area_of_file(path)
        if own not in {"protocol", "paths", "atomic", "control"}:
            continue
        for name in sorted(_imports(path)):
            if _area(name) not in {own, "tether"}:
                wrong.append(f"{path.relative_to(SRC)} imports {name}")
    assert not wrong, "leaf modules importing Tether:\n" + "\n".join(wrong)


def _named_in_map() -> set[str]:
    # A module is in the map when its path under src/tether/ stands in backticks.
    return set(re.findall(r"`([\w/.-]+\.py)`", ARCHITECTURE.read_text(encoding="utf-8")))


def test_every_module_is_in_the_architecture_map() -> None:
    named = _named_in_map()
    missing = [
        rel
        for path in _modules()
        if path.name != "__init__.py" and (rel := path.relative_to(SRC).as_posix()) not in named
    ]
    assert not missing, (
        "docs/architecture.md does not name these modules (add each as `area/module.py` "
        "to its area's table):\n" + "\n".join(missing)
    )


def test_the_map_names_no_module_that_is_gone() -> None:
    modules = {path.relative_to(SRC).as_posix() for path in _modules()}
    # Only names under an area of src/tether/ (not tests/… or other folders).
    gone = sorted(
        name
        for name in _named_in_map()
        if "/" in name and name.split("/")[0] in LAYER and name not in modules
    )
    assert not gone, "docs/architecture.md names modules that do not exist:\n" + "\n".join(gone)


TESTS = ROOT / "tests"


def _shared_test_module(dotted: str) -> bool:
    """What a test may import from tests/: the fixtures and a conftest."""
    parts = dotted.split(".")
    return parts[:2] == ["tests", "fixtures"] or "conftest" in parts


def test_no_test_module_imports_another_test_module() -> None:
    # A helper two test modules need belongs in tests/fixtures/, so that
    # running (or deleting) one test module never depends on another.
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # `from tests.ui import test_browser` names the module after `import`.
                module = "tests.<relative>" if node.level else node.module or ""
                names = [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            bad += [
                f"{path.relative_to(ROOT)}: imports {name}"
                for name in names
                if name.startswith("tests.") and not _shared_test_module(name)
            ]
    assert not bad, (
        "test modules import other test modules (move the helper to tests/fixtures/):\n"
        + "\n".join(bad)
    )
