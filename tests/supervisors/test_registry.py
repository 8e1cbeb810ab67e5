"""Registry: unique names across restarts, never a dead ref, duplicate keys for pub/sub."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

import supervisors as sup
from dspy_actors.testing._polling import wait_until
from tests.supervisors.actors import Worker


def test_unique_names_refuse_a_second_live_actor_and_drop_dead_ones() -> None:
    names = sup.Registry()
    a, b = Worker.start("a"), Worker.start("b")
    try:
        names.register("x", a)
        names.register("x", a)  # idempotent for the same ref
        with pytest.raises(sup.AlreadyRegistered, match="'x'"):
            names.register("x", b)
        a.tell("crash")
        sup.wait_for_exit(a, 5.0)
        wait_until(lambda: names.whereis("x") is None)
        names.register("x", b)
        assert names.lookup("x") is b
        assert names.names() == ["x"]
    finally:
        b.stop(block=True, timeout=5.0)


def test_duplicate_keys_dispatch_to_every_live_subscriber() -> None:
    topics = sup.Registry(keys="duplicate")
    subs = [Worker.start(f"s{i}") for i in range(3)]
    try:
        for ref in subs:
            topics.register("news", ref)
        assert len(topics.lookup_all("news")) == 3
        assert topics.dispatch("news", "hello") == 3
        subs[0].stop(block=True, timeout=5.0)
        wait_until(lambda: len(topics.lookup_all("news")) == 2)
        assert topics.dispatch("news", "again") == 2
        assert topics.dispatch("nobody", "x") == 0
    finally:
        for ref in subs[1:]:
            ref.stop(block=True, timeout=5.0)


class Plain(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def test_plain_pykka_actors_are_checked_for_liveness_on_lookup() -> None:
    names = sup.Registry()
    ref = Plain.start()
    names.register("plain", ref)
    assert names.ask("plain", 5, timeout=5.0) == 5
    ref.stop(block=True, timeout=5.0)
    assert names.whereis("plain") is None
    with pytest.raises(sup.NotRegistered):
        names.ask("plain", 5, timeout=5.0)


def test_registry_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="'unique' or 'duplicate'"):
        sup.Registry(keys="many")  # type: ignore[arg-type]
