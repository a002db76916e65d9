"""Imports run one way (DESIGN.md section 3): `data`, `nn` and the small shared modules at the
bottom; `training` and `evaluation` use them but never each other or `models`; `models` use
everything below them; the command-line entry points sit on top. Checked on every import in the
package, including the ones inside functions."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xray_gen"

# part of the package -> the parts it may import (itself always allowed)
SHARED = {"files", "images", "versions", "xla_flags", "configs"}
ALLOWED = {
    **{name: SHARED for name in SHARED},
    "data": SHARED,
    "nn": SHARED,
    "training": SHARED | {"data", "nn"},
    "evaluation": SHARED | {"data", "nn"},
    "models": SHARED | {"data", "nn", "training", "evaluation"},
    "runner": SHARED | {"data", "nn", "training", "evaluation", "models"},
    "main": SHARED | {"data", "nn", "training", "evaluation", "models", "runner"},
    "evaluate": SHARED | {"data", "nn", "training", "evaluation", "models"},
}


def _part(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_parts(path: pathlib.Path):
    """(line, part of xray_gen) of every import of the package in the file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "xray_gen" else [f"xray_gen.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "xray_gen" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_module_belongs_to_a_layer():
    parts = {_part(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to a layer in this test"


def test_imports_run_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        part = _part(path)
        for line, target in _imported_parts(path):
            if target != part and target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {part} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from xray_gen.models import vcn\n    import xray_gen.training.loop\n")
    assert [t for _, t in _imported_parts(module)] == ["models", "training"]
