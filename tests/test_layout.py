"""The tests' layout: directories mirror the packages, and what tests share lives in
tests/support, so no test module or conftest file imports another."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACKAGES = ("gateway", "policies")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def is_test_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module.startswith("tests.") and (last.startswith("test_") or last == "conftest")


def test_no_module_of_the_tests_imports_a_test_module_or_a_conftest() -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in TESTS.rglob("*.py")
        for module in imported_modules(path)
        if is_test_module(module)
    )
    assert not offenders, "move what they share to tests/support: " + "; ".join(offenders)


def test_every_test_directory_of_the_packages_mirrors_a_package() -> None:
    strays = sorted(
        str(folder.relative_to(ROOT))
        for top in PACKAGES
        for folder in (TESTS / top).rglob("*")
        if folder.is_dir()
        and folder.name != "__pycache__"
        and not (ROOT / folder.relative_to(TESTS) / "__init__.py").is_file()
    )
    assert not strays, f"test directories with no package of that name: {strays}"


def test_every_subpackage_has_its_test_directory() -> None:
    missing = sorted(
        str(Path("tests") / package.parent.relative_to(ROOT))
        for top in PACKAGES
        for package in (ROOT / top).rglob("__init__.py")
        if package.parent != ROOT / top
        and not (TESTS / package.parent.relative_to(ROOT) / "__init__.py").is_file()
    )
    assert not missing, f"subpackages without a test directory: {missing}"
