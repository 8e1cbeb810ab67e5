"""``AppConfig``: an app's settings as ``dsa.start(...)`` checked them, and where its stores
live (``data_dir_for``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs

import supervisors

if TYPE_CHECKING:
    from dspy_actors.lm._lm import LM


@dataclass(frozen=True, slots=True)
class AppConfig:
    """Settings of an app; see :func:`dspy_actors.start` for what each means."""

    name: str
    data_dir: Path
    lm: LM | None
    fallbacks: tuple[LM, ...]
    lm_max_queue: int
    lm_processes: int
    breaker: Mapping[str, Any]
    rate_limit: Mapping[str, Any] | None
    max_in_flight: int
    module_max_in_flight: int
    poison_threshold: int
    call_timeout: float
    submit_threads: int
    log: Literal["json", "console"] | None
    on_exit: Callable[[supervisors.ExitReason], None] | None = None
    root_intensity: int = 3
    root_period: float = 5.0
    self_restarts: int = 0
    # A temporary directory of this app alone (no explicit name or data_dir): removed on stop.
    private_data_dir: bool = False
    lm_max_in_flight: int = 4096
    lm_loops: int = 1
    # A Ray cluster that runs started by app.optimize fan their examples out over.
    ray_address: str | None = None
    # A postgresql:// URL: the stores live in that database, shared by replicas.
    store: str | None = None
    store_retry_for: float = 10.0


def data_dir_for(name: str | None, data_dir: str | Path | None) -> tuple[Path, bool]:
    """Where an app's stores live, and whether that directory is the app's own (removed
    when it stops). Saved state is shared only by apps that ask for it: an explicit
    ``data_dir``, or an explicit ``name`` (the user data dir / name). An app with neither
    gets a private temporary directory, so a script never loads state another, unrelated
    script saved under the same default name."""
    if data_dir is not None:
        path = Path(data_dir)
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"dsa.start(data_dir=...): {str(path)!r} exists and is not a directory"
            )
        return path, False
    if name is not None:
        return Path(platformdirs.user_data_dir("dspy_actors")) / name, False
    return Path(tempfile.mkdtemp(prefix="dspy_actors-")), True
