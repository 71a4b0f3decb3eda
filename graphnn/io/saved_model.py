"""Saved models: one self-contained file with an inference graph (its text IR) and the weights.

``save_model(path, outputs, session)`` extracts what ``outputs`` need, with the session's current
variable values; ``load_model(path)`` parses it back into a ``LoadedModel`` that runs without the
Python code that built it. The ahead-of-time compiler and the CLI read the same file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from graphnn.errors import GraphnnError, SerializationError
from graphnn.io.checkpoint import read_npz, write_npz_atomic
from graphnn.ir import ArrayValue, Graph, Node
from graphnn.session import Session
from graphnn.subgraph import extract
from graphnn.text_ir import INLINE_LIMIT, node_id, parse_graph, print_graph

FORMAT = "graphnn-saved-model-1"


def save_model(path: str | os.PathLike[str], outputs: Any, session: Session | None = None,
               name: str = "model") -> None:
    """Write the inference graph of ``outputs`` and its weights to ``path`` (atomically).

    ``outputs`` is a node or list of nodes (with ``session`` holding the weights), or a model
    compiled with ``Module.compile`` (its evaluation output and session are used).
    """
    if hasattr(outputs, "trainer"):
        trainer = outputs.trainer
        outputs, session = [trainer.eval_output], trainer.session
    nodes = [outputs] if isinstance(outputs, Node) else list(outputs)
    if session is None:
        raise GraphnnError("save_model needs the session that holds the weights")
    variables = [n for n in session.graph.subgraph_order(nodes) if n.op == "variable"]
    values = dict(zip(variables, session.run(variables)))
    graph, _ = extract(session.graph, nodes, values, name=name)
    arrays = {}
    for i, n in enumerate(graph.nodes):
        for v in n.attrs.values():
            if isinstance(v, ArrayValue) and v.array.size > INLINE_LIMIT:
                arrays[node_id(n, i)] = v.array
    write_npz_atomic(path, {f"array/{k}": v for k, v in arrays.items()},
                     {"format": FORMAT, "graph": print_graph(graph)})


class LoadedModel:
    """A saved model ready to run: ``model(x)`` or ``model.predict(x, batch_size)``.

    Attributes: graph, session, inputs (placeholders in graph order), outputs.
    """

    def __init__(self, graph: Graph, backend: str | None = None) -> None:
        self.graph = graph
        self.session = Session(graph, backend)
        self.inputs = graph.placeholders
        self.outputs = list(graph.outputs)

    def __call__(self, *arrays: np.ndarray) -> Any:
        if len(arrays) != len(self.inputs):
            names = ", ".join(p.name or "?" for p in self.inputs)
            raise GraphnnError(f"the model takes {len(self.inputs)} inputs ({names}), "
                               f"got {len(arrays)}")
        out = self.session.run(self.outputs, dict(zip(self.inputs, arrays)))
        return out[0] if len(out) == 1 else out

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        parts = [self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0,))


def load_model(path: str | os.PathLike[str], backend: str | None = None) -> LoadedModel:
    """Read a file written by ``save_model``.

    Raises:  SerializationError for a missing, damaged or foreign file, or a graph that does not
             parse (with the parser's line and column).
    """
    arrays, meta = read_npz(path, FORMAT)
    values = {k.removeprefix("array/"): v for k, v in arrays.items()}
    try:
        graph = parse_graph(str(meta["graph"]), values)
    except (GraphnnError, KeyError) as e:
        raise SerializationError(f"{path}: the stored graph does not load: {e}") from None
    return LoadedModel(graph, backend)
