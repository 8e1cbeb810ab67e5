"""Restart intensity accounting, checked against a model with hypothesis and a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import supervisors as sup
from dspy_actors.testing._clock import FakeClock
from tests.supervisors.actors import crash, new_ref, spec


def allowed_by_model(times: list[float], intensity: int, period: float) -> list[bool]:
    """OTP's definition, restated: restart i is allowed iff the restarts t_j (j <= i) with
    t_i - t_j <= period number at most ``intensity``."""
    return [
        sum(1 for t in times[: i + 1] if now - t <= period) <= intensity
        for i, now in enumerate(times)
    ]


# Exact, repeating values too, so restarts land exactly one period apart (the boundary).
gaps = st.lists(
    st.one_of(
        st.sampled_from([0.0, 0.5, 1.0, 2.0]),
        st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    gaps=gaps,
    intensity=st.integers(0, 6),
    period=st.one_of(st.sampled_from([1.0, 2.0]), st.floats(0.1, 10.0)),
)
def test_restart_intensity_matches_the_model(
    gaps: list[float], intensity: int, period: float
) -> None:
    clock = FakeClock()
    counter = sup.RestartIntensity(intensity, period, clock)
    times = []
    decisions = []
    for gap in gaps:
        clock.advance(gap)
        times.append(clock())
        decisions.append(counter.record())
    assert decisions == allowed_by_model(times, intensity, period)


@settings(max_examples=15, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=8),
    intensity=st.integers(0, 3),
)
def test_a_live_supervisor_escalates_exactly_when_the_model_says(
    gaps: list[float], intensity: int
) -> None:
    period = 2.0
    clock = FakeClock()
    root = sup.Supervisor.start([spec("w")], intensity=intensity, period=period, clock=clock)
    try:
        times: list[float] = []
        for gap in gaps:
            clock.advance(gap)
            times.append(clock())
            expected = allowed_by_model(times, intensity, period)[-1]
            old = root.child("w")
            crash(old)
            if expected:
                new_ref(root, "w", old)
            else:
                reason = root.wait(5.0)
                assert reason is not None
                assert isinstance(reason.exception, sup.RestartIntensityExceeded)
                return
        assert root.is_alive
    finally:
        if root.is_alive:
            root.stop()


def test_invalid_intensity_settings_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="intensity must be an int >= 0"):
        sup.RestartIntensity(-1, 5.0, FakeClock())
    with pytest.raises(ValueError, match="period must be > 0"):
        sup.RestartIntensity(3, 0.0, FakeClock())
