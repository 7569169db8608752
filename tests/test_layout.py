"""The layers stay one-way: simulations may import everything; clients and server only shared and
their own folder, never each other; shared only itself. The scorer (what a site runs for its
users) needs neither Flower nor Opacus."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def imports_of(folder: str) -> dict[str, list[str]]:
    return {
        str(p.relative_to(ROOT)): imported_modules(p) for p in sorted((ROOT / folder).rglob("*.py"))
    }


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path} imports {name}"
        for path, names in imports_of(folder).items()
        for name in names
        if name.split(".")[0] in forbidden or name.startswith(forbidden)
    ]


def test_lower_layers_never_import_simulations():
    for folder in ("clients", "server", "shared"):
        assert violations(folder, ("simulations",)) == []


def test_clients_and_server_never_import_each_other():
    assert violations("clients", ("server",)) == []
    assert violations("server", ("clients",)) == []


def test_shared_imports_only_itself():
    assert violations("shared", ("clients", "server", "simulations")) == []


def test_the_scorer_needs_no_flower_and_no_opacus():
    assert violations("clients/scorer", ("flwr", "opacus", "clients.federation")) == []


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from simulations.cli import main\nimport server.certs\n")
    assert imported_modules(bad) == ["simulations.cli", "server.certs"]


def test_every_test_file_below_a_folder_mirrors_a_module():
    """tests/A/B/test_C.py tests A/B/C.py or the package A/B/C; tests/test_*.py are about the
    repository as a whole (its layout, its compose file)."""
    strays = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT / "tests")
        if len(rel.parts) == 1:
            continue
        name = rel.name.removeprefix("test_").removesuffix(".py")
        module = ROOT / rel.parent / f"{name}.py"
        package = ROOT / rel.parent / name / "__init__.py"
        if not (module.exists() or package.exists()):
            strays.append(str(rel))
    assert strays == []
