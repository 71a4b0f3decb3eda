"""``Module``, the base of every layer, and ``Sequential``.

A module owns parameters (initial values drawn when the module is constructed) and child modules.
Calling it on a symbolic tensor builds its part of the graph; the first call creates its
variables in that tensor's graph, named by the module path (``features.0.weight``), and later
calls reuse them, so a training graph and an evaluation graph built from one model share weights.
``train()``/``eval()`` choose which graph the next call builds (dropout, batch statistics).

Variable values live in a Session: ``state_dict(session)`` reads them, ``load_state_dict(state,
session)`` writes them; without a session they read and set the initial values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from graphnn.errors import GraphError, ShapeError
from graphnn.ir import Graph, Node
from graphnn.ops.registry import name_scope
from graphnn.ops.source import variable


class Parameter:
    """A variable's initial value, and its node once the module has been called."""

    def __init__(self, value: np.ndarray, trainable: bool = True) -> None:
        self.value = np.asarray(value)
        self.trainable = trainable
        self.node: Node | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)


class Module:
    """Base class of layers: parameters, children, train/eval mode, graph building.

    Subclasses create parameters with ``self.add_parameter(name, array)`` in ``__init__`` and
    implement ``forward(*inputs) -> Node``, reading parameters with ``self.var(name)``.
    """

    _params: dict[str, Parameter]
    _children: dict[str, Module]
    training: bool
    _path: str | None
    _graph: Graph | None
    _updates: list[Node]
    trainer: Any

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_path", None)
        object.__setattr__(self, "_graph", None)
        object.__setattr__(self, "_updates", [])

    # -- registration ----------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Module):
            self._children[name] = value
        object.__setattr__(self, name, value)

    def add_parameter(self, name: str, value: np.ndarray, trainable: bool = True) -> Parameter:
        p = Parameter(value, trainable)
        self._params[name] = p
        return p

    def add_module(self, name: str, module: Module) -> None:
        self._children[name] = module
        object.__setattr__(self, name, module)

    # -- traversal -------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, trainable_only: bool = False) -> Iterator[tuple[str, Parameter]]:
        """(path, Parameter) for every parameter of the tree; buffers included unless asked."""
        for path, module in self.named_modules():
            for name, p in module._params.items():
                if p.trainable or not trainable_only:
                    yield (f"{path}.{name}" if path else name), p

    def parameters(self, trainable_only: bool = True) -> list[Parameter]:
        return [p for _, p in self.named_parameters(trainable_only)]

    def children(self) -> list[Module]:
        return list(self._children.values())

    def count_parameters(self, trainable_only: bool = True) -> int:
        return int(sum(p.value.size for p in self.parameters(trainable_only)))

    # -- modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -- graph building --------------------------------------------------------------------------
    def __call__(self, *inputs: Node, **kwargs: Any) -> Node:
        if self._path is None:  # the root: name every module of the tree by its path
            for path, m in self.named_modules():
                object.__setattr__(m, "_path", path)
        graph = next((i.graph for i in inputs if isinstance(i, Node)), None)
        if graph is None:
            raise GraphError(f"{type(self).__name__} must be called on a graphnn tensor")
        with graph, name_scope(self._path or "", absolute=True):
            return self.forward(*inputs, **kwargs)

    def forward(self, *inputs: Node, **kwargs: Any) -> Node:
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def var(self, name: str) -> Node:
        """The variable of parameter ``name`` in the current graph (created on first use)."""
        from graphnn.ir import get_default_graph

        p, graph = self._params[name], get_default_graph()
        if p.node is None:
            full = f"{self._path}.{name}" if self._path else name
            p.node = variable(p.value, name=full, trainable=p.trainable)
            object.__setattr__(self, "_graph", graph)
        elif p.node.graph is not graph:
            raise GraphError(f"{type(self).__name__} {self._path!r} already has variables in graph "
                             f"{p.node.graph.name if p.node.graph else None!r}; build every use of "
                             "one model in one graph")
        return p.node

    def add_update(self, node: Node) -> None:
        """Register a state update (e.g. running statistics) the training step must run."""
        self._updates.append(node)

    def update_ops(self) -> list[Node]:
        """State updates registered by the last training-mode build, over the whole tree."""
        return [u for _, m in self.named_modules() for u in m._updates]

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self, session: Any = None) -> dict[str, np.ndarray]:
        """Parameter and buffer values by path: from ``session`` if given, else initial values."""
        out = {}
        for name, p in self.named_parameters():
            if session is not None and p.node is not None:
                out[name] = session.run(p.node)
            else:
                out[name] = np.array(p.value)
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray], session: Any = None,
                        strict: bool = True) -> None:
        """Set values by path, into ``session`` when given, else as initial values.

        Raises:  GraphError listing missing/unexpected names (with strict); ShapeError naming the
                 parameter and both shapes when a shape differs. Nothing is changed on error.
        """
        params = dict(self.named_parameters())
        missing, unexpected = set(params) - set(state), set(state) - set(params)
        if strict and (missing or unexpected):
            raise GraphError(f"state does not match the model: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for name in set(params) & set(state):
            got = tuple(np.shape(state[name]))
            if got != params[name].shape:
                raise ShapeError(f"parameter {name!r}: the model has shape {params[name].shape}, "
                                 f"the state has {got}")
        if session is not None:
            built = {params[n].node: state[n] for n in set(params) & set(state)
                     if params[n].node is not None}
            session.load_variables(built)
        for name in set(params) & set(state):
            params[name].value = np.asarray(state[name], dtype=params[name].value.dtype).copy()

    # -- Keras-style training (graphnn.training.Trainer does the work) ---------------------------
    def compile(self, optimizer: Any = "adam", loss: Any = "cross_entropy",
                metrics: Any = (), backend: str | None = None, opt_level: int = 0,
                **loss_kwargs: Any) -> None:
        """Choose optimizer, loss, metrics, backend (None: the default, ``"llvm"``) and
        optimisation level; see ``graphnn.training.Trainer``."""
        from graphnn.training import Trainer

        object.__setattr__(self, "trainer", Trainer(self, optimizer, loss, metrics, backend,
                                                    loss_kwargs, opt_level))

    def _trainer(self) -> Any:
        if not hasattr(self, "trainer"):
            raise GraphError(f"call {type(self).__name__}.compile(optimizer, loss) first")
        return self.trainer

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """Train; returns a History. See ``Trainer.fit`` for the arguments."""
        return self._trainer().fit(x, y, **kwargs)

    def evaluate(self, x: Any, y: Any, **kwargs: Any) -> dict[str, float]:
        return self._trainer().evaluate(x, y, **kwargs)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        return self._trainer().predict(x, **kwargs)

    # -- printing --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        own = sum(p.value.size for p in self._params.values())
        head = f"{type(self).__name__}({self.extra_repr()})"
        if not self._children:
            return head + (f"  # {own:,} params" if own else "")
        lines = [f"{type(self).__name__}("]
        for name, child in self._children.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(f")  # {self.count_parameters(False):,} params")
        return "\n".join(lines)


class Sequential(Module):
    """Modules applied in order; children are named 0, 1, 2, ... (PyTorch) ."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def forward(self, x: Node) -> Node:  # type: ignore[override]
        for m in self._children.values():
            x = m(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._children.values())[i]

    def __len__(self) -> int:
        return len(self._children)


def graph_of(module: Module) -> Graph | None:
    """The graph a module's variables live in (None before its first call)."""
    return next((m._graph for _, m in module.named_modules() if m._graph is not None), None)
