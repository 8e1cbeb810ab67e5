"""Work on a Ray cluster: ``RayExecutor`` runs the examples of ``Evaluate`` and of an
optimization run's steps as Ray tasks on any node (see docs/deploying.md, "Optimization on a
Ray cluster"). Needs the ``ray`` extra (``pip install 'dspy-actors[ray]'``); importing this
package does not import Ray, using it does."""

from dspy_actors.distributed._ray_executor import RayExecutor, RayExecutorStats

__all__ = ["RayExecutor", "RayExecutorStats"]
