"""The package's layers point one way and its modules keep their private names: the picture in docs/architecture.md.

Imports are read from the source with ``ast``: module-level and function-level ones alike (a lazy import is still an
arrow), but not those under ``if TYPE_CHECKING:``, which never run.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "visattn"

# Lowest first. A part may import its own layer and the layers below, never above.
LAYERS = [
    {"version", "files", "utils", "blocks"},
    {"models", "cam", "faithfulness", "system"},
    {"config"},
    {"data", "bench"},
    {"training", "export"},
    {"pipelines"},
    {"study"},
    {"cli", "__main__", "__init__"},
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to: 'visattn.blocks.cbam' -> 'blocks'."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of every import that runs, resolved to absolute ``visattn.*`` names."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("visattn"):
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("visattn")]
    return out


def _all_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        for target, names, line in _imports(path):
            yield path, _module_name(path), target, names, line


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYER_OF), f"add {sorted(parts - set(LAYER_OF))} to LAYERS and docs/architecture.md"


def test_imports_point_down_or_sideways_never_up():
    upward = []
    for path, module, target, _, line in _all_imports():
        source, dest = _part(module), _part(target)
        if source != dest and LAYER_OF[dest] > LAYER_OF[source]:
            upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} -> {dest} ({target})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_cycle_between_parts():
    edges: dict[str, set[str]] = {}
    for _, module, target, _, _ in _all_imports():
        if _part(module) != _part(target):
            edges.setdefault(_part(module), set()).add(_part(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    cycles = sorted(part for part in edges if reaches(part, part, {part}))
    assert not cycles, f"parts on an import cycle: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    private = []
    for path, module, target, names, line in _all_imports():
        if target == module:
            continue
        for name in names:
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                private.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} from {target}")
    assert not private, "private names used outside their module (make them public seams or move them):\n" + \
        "\n".join(private)
