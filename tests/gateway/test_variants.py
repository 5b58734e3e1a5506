"""Model variants: callers split by the weights, each keeping its variant while the
experiment stays; check-config refuses experiments it could not serve, naming the path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.variants import Experiment

PRINCIPALS = 10_000
TOLERANCE = 0.015  # 1.5 percentage points; the binomial spread at 10 % is 0.3 points
CHOICES = {"gemma3-270m": 90, "gemma3-270m-q8": 10}


def experiment(name: str = "chat-2026-12", choices: dict[str, float] = CHOICES) -> Experiment:
    return Experiment.model_validate({"experiment": name, "choices": choices})


def principals(kind: str = "key") -> list[str]:
    """Fixed callers of each kind the auth policy names: the test is deterministic."""
    if kind == "ip":
        return [f"ip:10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(PRINCIPALS)]
    return [f"{kind}:{i:012x}" for i in range(PRINCIPALS)]


def shares(exp: Experiment, callers: list[str]) -> dict[str, float]:
    counts = Counter(exp.assign(principal) for principal in callers)
    return {name: counts[name] / len(callers) for name in exp.choices}


@pytest.mark.parametrize("kind", ["key", "jwt", "ip"])
@pytest.mark.parametrize(
    "choices",
    [CHOICES, {"a": 50, "b": 30, "c": 20}, {"a": 1, "b": 1}, {"only": 3}, {"a": 0.5, "b": 99.5}],
)
def test_the_split_converges_to_the_weights(choices: dict[str, float], kind: str) -> None:
    total = sum(choices.values())
    found = shares(experiment(choices=choices), principals(kind))
    for name, weight in choices.items():
        assert found[name] == pytest.approx(weight / total, abs=TOLERANCE), name


def test_a_caller_keeps_its_variant_across_reloads_of_the_same_experiment() -> None:
    callers = principals()[:2000]
    before = [experiment().assign(p) for p in callers]
    reordered = experiment(choices=dict(reversed(CHOICES.items())))  # the file edited
    assert [reordered.assign(p) for p in callers] == before
    assert [experiment().assign(p) for p in callers] == before


def test_a_new_experiment_name_draws_every_caller_afresh() -> None:
    callers = principals()
    before = [experiment().assign(p) for p in callers]
    renamed = experiment("chat-2027-01")
    after = [renamed.assign(p) for p in callers]
    moved = sum(b != a for b, a in zip(before, after, strict=True)) / len(callers)
    # Independent draws at 90/10 differ for 2 * 0.9 * 0.1 = 18 % of the callers.
    assert moved == pytest.approx(0.18, abs=TOLERANCE)
    assert shares(renamed, callers)["gemma3-270m-q8"] == pytest.approx(0.10, abs=TOLERANCE)


def test_ramping_two_variants_moves_only_the_callers_it_must() -> None:
    callers = principals()
    before = experiment()
    after = experiment(choices={"gemma3-270m": 80, "gemma3-270m-q8": 20})
    for principal in callers:
        if before.assign(principal) == "gemma3-270m-q8":
            assert after.assign(principal) == "gemma3-270m-q8"


def test_the_assignment_is_the_same_in_every_process() -> None:
    """BLAKE2b, not Python's hash(): salted per process, it would re-draw at each restart
    and differ between replicas."""
    exp = experiment(choices={"a": 1, "b": 1, "c": 1, "d": 1})
    assert [exp.assign(f"key:{i}") for i in range(8)] == KNOWN


KNOWN = ["a", "c", "d", "c", "c", "c", "b", "d"]


def test_principals_no_encoder_takes_are_still_assigned() -> None:
    assert experiment().assign("jwt:\ud800") in CHOICES


def write(tmp_path: Path, variants: str, models: str = "gemma3-270m, gemma3-270m-q8") -> Path:
    urls = "".join(
        f"  {name}: {{upstreams: ['http://127.0.0.1:9']}}\n" for name in models.split(", ")
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(f"models:\n{urls}variants:\n{variants}")
    return path


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        (
            "  chat: {experiment: e1, choices: {gemma3-270m: 90, gemma3-27b: 10}}\n",
            "variants.chat.choices.gemma3-27b: not a configured model; models are "
            "['gemma3-270m', 'gemma3-270m-q8']",
        ),
        (
            "  chat: {experiment: e1, choices: {gemma3-270m: 0, gemma3-270m-q8: 10}}\n",
            "variants.chat.choices.gemma3-270m: Input should be greater than 0",
        ),
        (
            "  chat: {experiment: e1, choices: {gemma3-270m: -5}}\n",
            "variants.chat.choices.gemma3-270m: Input should be greater than 0",
        ),
        (
            "  chat: {experiment: e1, choices: {gemma3-270m: .inf}}\n",
            "variants.chat.choices.gemma3-270m: Input should be a finite number",
        ),
        ("  chat: {choices: {gemma3-270m: 1}}\n", "variants.chat.experiment: Field required"),
        (
            "  chat: {experiment: '', choices: {gemma3-270m: 1}}\n",
            "variants.chat.experiment: String should have at least 1 character",
        ),
        (
            "  chat: {experiment: e1, choices: {}}\n",
            "variants.chat.choices: Dictionary should have at least 1 item",
        ),
        (
            "  chat: {experiment: e1, choices: {gemma3-270m: 1}, colour: red}\n",
            "variants.chat.colour: unknown key",
        ),
        (
            "  gemma3-270m: {experiment: e1, choices: {gemma3-270m-q8: 1}}\n",
            "variants.gemma3-270m: is the name of a configured model",
        ),
    ],
)
def test_check_config_refuses_an_experiment_it_could_not_serve(
    variants: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(write(tmp_path, variants))]) == 2
    assert expected in capsys.readouterr().err


def test_check_config_accepts_an_experiment_of_configured_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variants = "  chat: {experiment: e1, choices: {gemma3-270m: 90, gemma3-270m-q8: 10}}\n"
    assert main(["check-config", str(write(tmp_path, variants))]) == 0
    assert "ok (2 models" in capsys.readouterr().out


def test_a_policy_file_alone_is_checked_without_the_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("variants:\n  chat: {experiment: e1, choices: {a: 90, b: 0}}\n")
    assert main(["check-config", str(path)]) == 2
    assert "variants.chat.choices.b: Input should be greater than 0" in capsys.readouterr().err
    path.write_text("variants:\n  chat: {experiment: e1, choices: {a: 90, b: 10}}\n")
    assert main(["check-config", str(path)]) == 0


def test_variants_go_either_in_the_policy_file_or_inline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text("tiers: {}\n")
    path = write(tmp_path, "  chat: {experiment: e1, choices: {gemma3-270m: 1}}\n")
    path.write_text(path.read_text() + "policy_file: policy.yaml\n")
    assert main(["check-config", str(path)]) == 2
    assert "give either policy_file or inline tiers/policies/variants" in capsys.readouterr().err
