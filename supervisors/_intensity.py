"""Restart intensity: at most ``intensity`` restarts within any ``period`` seconds (OTP)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class RestartIntensity:
    """Sliding-window restart accounting, as OTP's supervisor does it.

    ``record()`` notes one restart now and says whether it is allowed: a restart is allowed
    while the restarts within the last ``period`` seconds (this one included, ``now - t <=
    period``) number at most ``intensity``.
    """

    def __init__(self, intensity: int, period: float, clock: Callable[[], float]) -> None:
        if isinstance(intensity, bool) or not isinstance(intensity, int) or intensity < 0:
            raise ValueError(f"intensity must be an int >= 0, got {intensity!r}")
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period!r}")
        self.intensity = intensity
        self.period = period
        self._clock = clock
        self._restarts: deque[float] = deque()

    def record(self) -> bool:
        now = self._clock()
        restarts = self._restarts
        restarts.append(now)
        while restarts and now - restarts[0] > self.period:
            restarts.popleft()
        return len(restarts) <= self.intensity

    @property
    def recent(self) -> int:
        """Restarts recorded within the current window."""
        now = self._clock()
        return sum(1 for t in self._restarts if now - t <= self.period)
