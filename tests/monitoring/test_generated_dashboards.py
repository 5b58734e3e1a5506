"""The dashboards are generated: the committed JSON is each generator's output, and each
generator checks it as a script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from monitoring import dashboard
from monitoring.dashboard_kit import render

GENERATORS = (dashboard,)


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_the_committed_dashboard_is_the_generators_output(generator: ModuleType) -> None:
    assert generator.OUTPUT.read_text() == render(generator.build())


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_the_generator_checks_the_committed_json_as_a_script(generator: ModuleType) -> None:
    script = Path(generator.__file__ or "")
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
