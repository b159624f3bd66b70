"""Think like a vertex: the graph as a network of actors, one trio task each.

How a value travels: `plan.py` splits the vertices a fetch needs into actors
(an expensive vertex alone, cheap neighbours fused) and says who sends what
to whom. `network.py` runs them: the step driver hands every actor the source
values it reads, each actor computes its members in topological order (cheap
ones inline on the trio thread, expensive ones on `pool.py`'s worker threads)
and sends each result once to every actor that reads it; gradients come back
along the same links in reverse. `executor.py` keeps the networks alive
between calls and offers `run`, `backward`, `stream` and their async forms.
"""

from .executor import ActorExecutor

__all__ = ["ActorExecutor"]
