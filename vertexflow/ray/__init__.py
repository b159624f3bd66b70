"""Beyond one process: a graph's partitions as Ray actors (optional extra `ray`).

    from vertexflow.ray import RayExecutor
    with RayExecutor(graph, partitions=2) as ex:
        out = ex.run(feeds, fetch)

Importing vertexflow never imports this module or Ray; this module imports
Ray only when an executor is made. See `executor` for how a step runs,
`partition` for how the graph is cut, `worker` for a partition's process.
"""

from .executor import RayExecutor
from .partition import Partitioning, partition

__all__ = ["Partitioning", "RayExecutor", "partition"]
