"""A program tree described in code, started, inspected, and changed while it serves.

Run it:  .venv/bin/python examples/program_tree.py

``app.program(name, steps)`` is the builder API: each step is a child spec, ``(id,
ModuleClass, kwargs)``, as an OTP child spec names a module and its start arguments. Each
step becomes a supervised actor (or a subtree, for a composite module) under the
program's own supervisor, with the restart strategy you choose. Watch for:

1. the tree as started, and ``which_children`` of the program's supervisor;
2. a step's actor killed: with ``rest_for_one``, the steps after it restart too;
3. a live upgrade (new instructions and demos) while other threads keep calling:
   calls in flight finish on v1, later ones run v2, none is lost;
4. a second program served beside it, and the first one stopped, with the tree after each.
"""

from __future__ import annotations

import tempfile
import threading
import time

import dspy_actors as dsa
import supervisors
from dspy_actors.testing import SimLM

ORDERS = {"A-100": "shipped on Monday", "B-200": "waiting for payment"}


class LookUpOrder(dsa.Module):
    """Plain Python step: finds the order the message mentions."""

    def __init__(self, orders: dict[str, str]) -> None:
        super().__init__()
        self.orders = orders

    def forward(self, message: str) -> dsa.Prediction:
        found = [f"{oid}: {status}" for oid, status in self.orders.items() if oid in message]
        return dsa.Prediction(order_status=found[0] if found else "no order mentioned")


# The child specs of the program, in order: each step's outputs are merged into the values
# the next steps can take (by their signature's inputs, or forward's parameters).
STEPS = [
    ("intent", dsa.Predict, {"signature": "message -> intent: str"}),
    ("order", LookUpOrder, {"orders": ORDERS}),
    ("reply", dsa.ChainOfThought, {"signature": "message, intent, order_status -> reply"}),
]


def wait_for_calls(outcomes: list[str], count: int, timeout: float = 60.0) -> None:
    """Until ``count`` calls have finished (never forever: a stuck run is an error)."""
    deadline = time.monotonic() + timeout
    while len(outcomes) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(outcomes)} of {count} calls finished in {timeout} s")
        time.sleep(0.01)


def show(title: str, app: dsa.App) -> None:
    print(f"\n== {title}\n{app.tree().render()}")


def main() -> None:
    supervisors.set_log_level("error")  # the kill below is on purpose
    with (
        SimLM() as sim,
        tempfile.TemporaryDirectory(prefix="tree-example-") as data_dir,
        dsa.start(
            lm=dsa.LM("openai/gpt-4o-mini", api_base=sim.openai_base, api_key="sim"),
            name="shop",
            data_dir=data_dir,
        ) as app,
    ):
        support = app.program("support", STEPS, strategy="rest_for_one")
        show("1. started: one actor per step under support@v1", app)

        program_sup = app.root.supervisor("modules").supervisor("support@v1")
        for child in program_sup.which_children():
            print(f"   which_children: {child.id:7} {child.state:8} restarts={child.restart_count}")

        answer = support.call(message="Where is my order A-100?")
        print(f"\n   reply (the last step's Prediction): {answer.reply!r}")

        # 2. Kill the middle step. rest_for_one: `order` and the steps after it restart.
        supervisors.kill(app.registry.lookup("shop/support@v1/order"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = {c.id: c for c in program_sup.which_children()}
            if children["reply"].restart_count >= 1 and all(
                c.state == "running" for c in children.values()
            ):
                break
            time.sleep(0.01)
        show("2. after killing `order` (rest_for_one: `reply` restarted with it)", app)

        # 3. Upgrade live: new instructions and a demo for the reply step, while 4 threads
        # keep calling. A pipeline's state is keyed "<step>.<parameter path>" (what an
        # optimizer's dump_state() gives, prefixed by the step); steps left out keep theirs.
        reply_state = dsa.ChainOfThought(STEPS[2][2]["signature"]).dump_state()["predict"]
        reply_state["signature"]["instructions"] = "Reply politely, in one sentence."
        reply_state["demos"] = [
            {"message": "Is B-200 paid?", "intent": "order status",
             "order_status": "B-200: waiting for payment", "reasoning": "It is not paid yet.",
             "reply": "Not yet: order B-200 is waiting for payment."}
        ]  # fmt: skip
        outcomes: list[str] = []
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                try:
                    support.call_with({"message": "Any news on B-200?"}, timeout=10)
                    outcomes.append("answered")
                except Exception as exc:  # any failure is counted and shown, never silent
                    outcomes.append(f"failed: {type(exc).__name__}: {exc}")

        callers = [threading.Thread(target=caller) for _ in range(4)]
        for thread in callers:
            thread.start()
        try:
            wait_for_calls(outcomes, 20)  # calls are flowing before the upgrade
            version = support.upgrade({"reply.predict": reply_state})
            wait_for_calls(outcomes, len(outcomes) + 20)  # and after it
        finally:
            stop.set()
            for thread in callers:
                thread.join(timeout=30)
        failed = [o for o in outcomes if o != "answered"]
        print(f"\n== 3. upgraded to v{version} under load: {len(outcomes)} calls, "
              f"{len(failed)} failed")  # fmt: skip
        for failure in failed[:3]:
            print("   ", failure)
        system = sim.requests[-1].messages[0]["content"]
        print(f"   v2's prompts carry the new instructions: {'Reply politely' in system}")
        show("   the tree now serves support@v2", app)

        # 4. Grow and shrink the tree while it runs.
        summarize = app.serve("summarize", dsa.Predict("text -> summary"))
        print("\n   summary:", summarize.call(text="Order A-100 shipped on Monday.").summary)
        support.stop()
        show("4. `summarize` served beside it, then `support` stopped", app)


if __name__ == "__main__":
    main()
