"""Think like a vertex: the graph as a network of actors, one trio task each.

How a value travels: `plan.py` splits the vertices a fetch needs into actors
(an expensive vertex alone, cheap neighbours fused) and says who sends what
to whom; `program.py` turns each actor's share into a typed program (what to
take from the mailbox, what to compute, whom to send it to, what to let go).
`network.py` runs them: the step driver hands every actor the source values
it reads, each actor takes what it waits for from its `mailbox.py`, has its
members computed where `placement.py` says (inline on the trio thread, on
`pool.py`'s worker threads, or on CUDA streams) and sends each result once
to every actor that reads it (from the worker that computed it, which may go
on to the actor's next segment); gradients come back along the same links in
reverse. `executor.py` keeps the networks alive between calls and offers
`run`, `backward`, `stream` and their async forms; `calls.py` hands a step
to the host and waits for it (deadlines included), `streaming.py` keeps a
stream's steps in order, and `schedule.py` decides whether a kind of call
runs as the network or as one actor (the tape).

How a vertex runs is not written here: a segment runs the code the
compiled tape generates for it (`tape.compile_segment`), or, when a step is
traced, checked or new in its shapes, each member through the one execution
core, `vertexflow.core.VertexRunner` (`forward` for a value, `derivative`
for a derivative rule), which the tape and the stream executor call too. The core takes the BLAS lock, calls the op, wraps its failure as a
`VertexError`, checks numerics and records the span; the reverse sweep's
summing (`core.total_gradient`) and one vertex's backward step
(`core.backward_vertex`) are shared the same way.
"""

from .executor import ActorExecutor

__all__ = ["ActorExecutor"]
