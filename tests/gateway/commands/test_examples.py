"""The shipped example configurations carry no credential anyone could copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
SHIPPED = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("compose/*.yaml")])
KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def test_every_shipped_config_is_checked() -> None:
    assert {p.name for p in SHIPPED} >= {"gateway.yaml", "policy.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shipped_config_holds_a_static_key_hash(path: Path) -> None:
    # A hash in an example lets in whoever has (or guesses) its key, in every copy made of it.
    assert KEY_HASH.findall(path.read_text()) == []


def test_the_example_policy_file_says_how_to_make_keys() -> None:
    text = (ROOT / "examples" / "policy.yaml").read_text()
    assert "llama-gateway keys create --tier" in text
    assert "secrets.token_urlsafe" in text  # a static key is made by its admin, never copied
