"""supervisors: Erlang/OTP supervision trees for Pykka actors.

Pykka gives threads, inboxes, futures and proxies; this package adds what OTP adds on top:
exit reasons, monitors, supervisors with restart strategies and intensity, dynamic and task
supervisors, names that survive restarts, and a view of the live tree. It knows nothing of
language models and can supervise any Pykka threading actor.

    import pykka, supervisors as sup

    class Worker(sup.SupervisedActor):
        def on_receive(self, message):
            return message * 2

    root = sup.Supervisor.start(
        [sup.ChildSpec("worker", Worker, name="worker")], strategy="one_for_one"
    )
    print(sup.registry.ask("worker", 21, timeout=1.0))   # 42, across restarts too
    print(root.tree().render())
    root.stop()
"""

from supervisors._actor import (
    SupervisedActor,
    ask,
    demonitor,
    exit_reason,
    kill,
    monitor,
    request_exit,
    supervised,
    tell_inline,
    wait_for_exit,
)
from supervisors._errors import (
    ActorCrashed,
    AlreadyPresent,
    AlreadyRegistered,
    AlreadyStarted,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    MaxChildrenReached,
    NotRegistered,
    RestartIntensityExceeded,
    StartError,
    SupervisorError,
    SupervisorExited,
    TaskQueueFull,
)
from supervisors._events import SupervisorEvent, set_log_level, set_reason_filter, subscribe
from supervisors._exit import KILLED, NORMAL, SHUTDOWN, Down, ExitReason, MonitorRef
from supervisors._handle import DynamicSupervisor, Supervisor, TaskSupervisor
from supervisors._intensity import RestartIntensity
from supervisors._lifecycle import drain_stranded
from supervisors._registry import Registry, registry
from supervisors._spec import Backoff, ChildSpec
from supervisors._supervisor import ChildCounts, ChildInfo, Strategy
from supervisors._tree import TreeNode

__all__ = [
    "KILLED",
    "NORMAL",
    "SHUTDOWN",
    "ActorCrashed",
    "AlreadyPresent",
    "AlreadyRegistered",
    "AlreadyStarted",
    "Backoff",
    "ChildCounts",
    "ChildInfo",
    "ChildNotFound",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpec",
    "Down",
    "DynamicSupervisor",
    "ExitReason",
    "MaxChildrenReached",
    "MonitorRef",
    "NotRegistered",
    "Registry",
    "RestartIntensity",
    "RestartIntensityExceeded",
    "StartError",
    "Strategy",
    "SupervisedActor",
    "Supervisor",
    "SupervisorError",
    "SupervisorEvent",
    "SupervisorExited",
    "TaskQueueFull",
    "TaskSupervisor",
    "TreeNode",
    "ask",
    "demonitor",
    "drain_stranded",
    "exit_reason",
    "kill",
    "monitor",
    "registry",
    "request_exit",
    "set_log_level",
    "set_reason_filter",
    "subscribe",
    "supervised",
    "tell_inline",
    "wait_for_exit",
]
