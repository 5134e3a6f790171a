"""Shared pytest configuration: hypothesis profiles and data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
CAMVID_ROOT = SHARED / "data" / "camvid"


@pytest.fixture
def camvid_root() -> Path:
    """The real CamVid set beside the project; skips the test when it is absent."""
    if not (CAMVID_ROOT / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID_ROOT} (expected ../shared/data/camvid)")
    return CAMVID_ROOT


@pytest.fixture
def started_runs(monkeypatch: pytest.MonkeyPatch) -> list:
    """The steps the CamVid runner's `Runs` would start, in order, none of them started."""
    from benchmarks.camvid import Runs

    started: list = []

    def wait(self: Runs, deadline: float, on_tick: object) -> bool:
        started.extend(self.pending)
        self.pending = []
        return True

    monkeypatch.setattr(Runs, "wait", wait)
    return started
