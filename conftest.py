"""Repository-wide pytest settings.

In CI (``SARSTEER_REQUIRE_FIXTURES=1``, set by ``.ci/run``) a test that skips because
a real fixture is missing (espeak-ng, Redis, an importable integration) fails instead:
a green CI must never hide a missing install step.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

REQUIRE_FIXTURES = os.environ.get("SARSTEER_REQUIRE_FIXTURES") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Turn fixture skips into failures in CI."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_FIXTURES and report.skipped and item.get_closest_marker("optional") is None:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every fixture must be present: {reason}"
