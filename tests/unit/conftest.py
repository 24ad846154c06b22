"""The unit layer: in-process tests of the package's rules and parsers, with no database, no
supervisor and no real tool. What needs time takes it from `clock`, which moves only when told."""

from __future__ import annotations

import pytest

from helpers.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
