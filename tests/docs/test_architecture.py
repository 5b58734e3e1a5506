"""The module map of docs/architecture.md names every module of the core and the policies,
and only modules that exist, so it cannot go stale as code moves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
MAP = ROOT / "docs" / "architecture.md"
PACKAGES = ("gateway", "policies")
_NAMED = re.compile(r"`((?:gateway|policies)/[\w/]+\.py)`")


def modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def named() -> set[str]:
    return set(_NAMED.findall(MAP.read_text(encoding="utf-8")))


def test_every_module_is_in_the_module_map() -> None:
    missing = sorted(modules() - named())
    assert not missing, (
        "docs/architecture.md's module map does not name these modules; add a line for each "
        f"(`path`: what it holds): {', '.join(missing)}"
    )


def test_the_module_map_names_only_modules_that_exist() -> None:
    gone = sorted(named() - modules())
    assert not gone, (
        "docs/architecture.md names modules that do not exist (moved or removed?): "
        f"{', '.join(gone)}"
    )
