"""One small Ray cluster on this machine for the tests of this folder: a head and two
worker nodes with one CPU each, no dashboard, a small object store, its files (and Ray's
address file) under a private temporary directory. Module-scoped by design: the tests of
this folder share it (Ray takes seconds to start on a busy machine), and it is shut down,
with every Ray process, before the module's last test is reported done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
# What the cluster's processes inherit: no usage reporting, the repository importable (the
# tests' metrics and responders are shipped by reference), the SimLM's API key.
CLUSTER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    "OPENAI_API_KEY": "k",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    saved = {k: os.environ.get(k) for k in (*CLUSTER_ENV, "RAY_TMPDIR")}
    # A short path: Ray's Unix sockets live under it (108-byte limit).
    tmp = tempfile.mkdtemp(prefix="dsaray-", dir="/tmp")
    os.makedirs(os.path.join(tmp, "ray"))
    os.environ.update(CLUSTER_ENV, RAY_TMPDIR=tmp)
    made = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        made.add_node(**NODE)
        made.add_node(**NODE)
        made.wait_for_nodes(timeout=120)
        ray.init(address=made.address, namespace="dspy-actors", log_to_driver=False)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
