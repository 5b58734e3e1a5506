"""The configuration reference names every setting the models accept, and no other.

Walks the pydantic models (nested models, dict values, lists of models) and requires each
setting's dotted path in backticks on its page: `server.port`, `models.<name>.upstreams`
(a dict's key is written `<name>`), `static_keys[].tier` (a list's item is `[]`). Only
leaves are required: a field that holds a model is documented through its own fields. A
field is written by its alias when it has one, since that is the key in YAML; the models
have no internal fields (derived values such as `StorageConfig.data_path` are properties).
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from gateway.config import GatewayConfig
from gateway.registry import available
from gateway.tiers import Tier
from gateway.variants import Experiment

DOCS = Path(__file__).parents[2] / "docs"
CONFIG_PAGE = DOCS / "configuration.md"
# Read by the registry from every policy entry, beside the policy's own settings.
CONFIG_EXTRA = {"policies[].type"}
_CODE = re.compile(r"`([^`\s]+)`")
_PATH = re.compile(r"[a-z_]+(?:\[\])?(?:\.(?:<name>|[a-z_]+)(?:\[\])?)+|[a-z_]+\[\]")


def _nested(annotation: Any, path: str) -> Iterator[tuple[type[BaseModel], str]]:
    """The models a field's type holds, each with the prefix of its fields' paths."""
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, f"{path}."
    elif origin is Annotated:
        yield from _nested(args[0], path)
    elif origin in (Union, types.UnionType):
        for arg in args:
            yield from _nested(arg, path)
    elif isinstance(origin, type) and issubclass(origin, Mapping) and args:
        yield from _nested(args[1], f"{path}.<name>")
    elif isinstance(origin, type) and issubclass(origin, Sequence) and args:
        yield from _nested(args[0], f"{path}[]")


def paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """The dotted path of every leaf setting of `model`."""
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        nested = list(_nested(field.annotation, path))
        if not nested:
            yield path
        for inner, inner_prefix in nested:
            yield from paths(inner, inner_prefix)


def known(leaves: set[str]) -> set[str]:
    """Every path a page may name: the leaves and the sections above them."""
    found = set(leaves)
    for leaf in leaves:
        parts = leaf.split(".")
        for end in range(1, len(parts)):
            section = ".".join(parts[:end])
            found |= {section, section.removesuffix("[]")}
    return found


def documented(page: Path) -> set[str]:
    return set(_CODE.findall(page.read_text(encoding="utf-8")))


def check(page: Path, leaves: set[str]) -> None:
    where = page.relative_to(DOCS.parent)
    assert page.is_file(), f"{where} is missing: it documents {', '.join(sorted(leaves))}"
    named = documented(page)
    missing = sorted(leaves - named)
    assert not missing, (
        f"{where} does not name these settings; write each as `path` in its table: "
        f"{', '.join(missing)}"
    )
    roots = {leaf.split(".")[0].removesuffix("[]") for leaf in leaves}
    candidates = {p for p in named if _PATH.fullmatch(p) and re.split(r"[.[]", p)[0] in roots}
    unknown = sorted(candidates - known(leaves))
    assert not unknown, (
        f"{where} names settings no model has (renamed or removed?): {', '.join(unknown)}"
    )


def config_leaves() -> set[str]:
    tiers, variants = paths(Tier, "tiers.<name>."), paths(Experiment, "variants.<name>.")
    return {*paths(GatewayConfig), *tiers, *variants, *CONFIG_EXTRA}


def test_the_configuration_page_names_every_gateway_and_tier_setting() -> None:
    check(CONFIG_PAGE, config_leaves())


@pytest.mark.parametrize("name", sorted(available()))
def test_each_policy_page_names_every_setting_of_its_policy(name: str) -> None:
    check(DOCS / "policies" / f"{name}.md", set(paths(available()[name].Settings)))


def test_the_walk_reaches_nested_models_dict_values_and_lists() -> None:
    leaves = config_leaves()
    assert {"server.port", "models.<name>.upstreams", "tiers.<name>.priority"} <= leaves
    assert {"variants.<name>.experiment", "variants.<name>.choices"} <= leaves
    auth = set(paths(available()["auth"].Settings))
    assert {"static_keys[].tier", "jwt.jwks_url", "anonymous.trusted_proxies"} <= auth
    limits = set(paths(available()["rate_limit"].Settings))
    assert "tiers.<name>.per_user.concurrency" in limits
