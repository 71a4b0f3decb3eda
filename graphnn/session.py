"""``Session``: owns variable state, compiles fetch sets on a backend, binds feeds, runs.

::

    with graphnn.Graph() as g:
        x = graphnn.placeholder((None, 3), name="x")
        w = graphnn.variable(np.ones((3, 2), np.float32), name="w")
        y = graphnn.relu(x @ w)
    sess = graphnn.Session(g)
    sess.run(y, {x: np.ones((4, 3))})           # -> ndarray (4, 2)
    sess.run({"y": y, "w": w}, {"x": data})     # -> {"y": ..., "w": ...}

Only the nodes the fetches need are executed. Variables are initialised from their initial value
the first time a run needs them (``global_variables_initializer()`` resets them). A run either
succeeds and commits all its variable writes, or raises and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from graphnn.backends import Backend, Executable, get_backend
from graphnn.backends.base import RunResult
from graphnn.errors import FeedError, GraphError, ShapeError
from graphnn.ir import Graph, Node, get_default_graph
from graphnn.profiler import KernelTime, Profile, median_time

Fetches = Any  # a Node, a node name, or a list/tuple/dict nesting of them


class Session:
    """Runs fetches of one graph on one backend and holds that graph's variable values.

    Args:
        graph: the graph to run (the default graph when None).
        backend: a backend name (``"llvm"``, ``"opencl"``, ``"reference"``) or a Backend
            instance; None (default): ``"llvm"``, or ``GRAPHNN_BACKEND``'s.
        opt_level: 0 runs the graph as built; 1-3 optimise each fetch set first (see
            ``graphnn.passes``), specialised to the fed shapes.
        passes: an explicit pass list instead of opt_level.
        dump_dir: write the graph after every pass there (also ``GRAPHNN_DUMP``).
        device: for ``backend="opencl"``: "gpu", "cpu", an index or a name substring (see
            ``graphnn devices``; ``GRAPHNN_OPENCL_DEVICE`` overrides it).

    Raises:  GraphError for an unknown backend, or a device given to a backend without devices.
    """

    def __init__(self, graph: Graph | None = None, backend: str | Backend | None = None,
                 opt_level: int = 0, passes: Sequence[Any] | None = None,
                 dump_dir: str | None = None, device: str | int | None = None) -> None:
        self.graph = graph if graph is not None else get_default_graph()
        self.backend = get_backend(backend, **({} if device is None else {"device": device}))
        self.opt_level, self.passes, self.dump_dir = opt_level, passes, dump_dir
        if dump_dir is not None and hasattr(self.backend, "dump_dir"):
            self.backend.dump_dir = dump_dir  # generated code goes beside the pass dumps
        self._state: dict[Node, np.ndarray] = {}
        self._counter = 0  # successful runs that drew random numbers; random ops key on it
        self._cache: dict[tuple[Any, ...], Executable] = {}

    def run(self, fetches: Fetches, feed_dict: Mapping[Any, Any] | None = None) -> Any:
        """Compute ``fetches`` given ``feed_dict``; the result has the structure of ``fetches``.

        Feeds are keyed by placeholder node or name; values are converted to the placeholder's
        dtype when that is a same-kind cast (float64 data into a float32 placeholder is fine).
        Returns numpy arrays (None for ``group`` nodes such as the initializer).
        Raises:  FeedError for a missing, unknown or mistyped feed (naming the placeholder and
                 expected vs. given); ExecutionError naming the node when a kernel fails.
        """
        flat, rebuild = _flatten(fetches, self.graph)
        exe, feeds, state, fresh = self._prepare(flat, feed_dict)
        result = exe.run(feeds, state, self._counter)
        # Commit only now that the run succeeded: a failed run leaves every variable unchanged.
        if fresh:
            self._state.update(fresh)
        if result.updates:
            self._state.update(result.updates)
        if exe.random:  # fetching values alone does not shift later dropout masks
            self._counter += 1
        return rebuild(result.outputs)

    def profile(self, fetches: Fetches, feed_dict: Mapping[Any, Any] | None = None,
                repeat: int = 10) -> Profile:
        """Time each kernel of ``fetches``' executable on its own (see ``graphnn.profiler``):
        one run fills the buffers, then every kernel (or numpy fallback) runs ``repeat`` more
        times alone, and ``repeat`` whole runs give ``Profile.run_s``. Compiles like ``run``
        (the same cached executable); changes no variable and not the run counter.

        Returns:  a ``Profile``: ``KernelTime`` per step in execution order (median seconds),
                  the whole run's median (seconds); ``print`` it for a table.
        Raises:  what ``run`` raises; GraphError for a backend that cannot time its kernels.
        """
        flat, _ = _flatten(fetches, self.graph)
        exe, feeds, state, _ = self._prepare(flat, feed_dict)
        if not hasattr(exe.exe if isinstance(exe, _ByName) else exe, "profile"):
            raise GraphError(f"backend {self.backend.name!r} cannot time its kernels")
        kernels = exe.profile(feeds, state, self._counter, repeat)  # type: ignore[attr-defined]
        run_s = median_time(lambda: exe.run(feeds, state, self._counter), repeat)
        return Profile(kernels, run_s)

    def _prepare(self, flat: list[Node], feed_dict: Mapping[Any, Any] | None) -> tuple[
            Executable, dict[Node, np.ndarray], Mapping[Node, np.ndarray],
            dict[Node, np.ndarray]]:
        """The executable for ``flat`` at the fed shapes (compiled once), the bound feeds, the
        variable state a run reads and the variables it initialises (not yet committed).

        Raises:  FeedError for a missing placeholder (and what feeding raises).
        """
        feeds = self._bind_feeds(feed_dict or {})
        shapes = [(id(p), v.shape) for p, v in feeds.items()]
        if len(shapes) > 1:
            shapes.sort()
        key = (tuple(map(id, flat)), tuple(shapes))
        exe = self._cache.get(key)
        if exe is None:
            exe = self._compile(flat, feeds)
            self._cache[key] = exe
        missing = [p for p in exe.placeholders if p not in feeds]
        if missing:
            p = missing[0]
            fed = sorted(q.name or "?" for q in feeds) or "nothing"
            raise FeedError(f"placeholder {p.name!r} ({p.type_str}) is needed by the fetches but "
                            f"was not fed; fed: {fed}")
        fresh = {v: np.array(v.attrs["init"].array) for v in exe.variables if v not in self._state}
        state = {**self._state, **fresh} if fresh else self._state  # executables never write it
        return exe, feeds, state, fresh

    def _compile(self, fetches: list[Node], feeds: dict[Node, np.ndarray]) -> Executable:
        static = getattr(self.backend, "static_shapes", False)  # compiles per fed shape
        if not self.opt_level and self.passes is None and not static:
            return self.backend.compile(self.graph, fetches)
        from graphnn.passes import PassManager
        from graphnn.passes.specialize import specialize
        from graphnn.subgraph import extract

        sub, _ = extract(self.graph, fetches)
        shapes = {p.name: v.shape for p, v in feeds.items() if p.name is not None}
        sub = specialize(sub, {p.name: shapes[p.name] for p in sub.placeholders
                               if p.name in shapes})
        optimized = PassManager(self.passes, self.opt_level, dump_dir=self.dump_dir).run(sub)
        return _ByName(self.backend.compile(optimized, optimized.outputs), self.graph)

    def _bind_feeds(self, feed_dict: Mapping[Any, Any]) -> dict[Node, np.ndarray]:
        bound: dict[Node, np.ndarray] = {}
        for key, value in feed_dict.items():
            node = self._feed_node(key)
            bound[node] = _convert_feed(node, value)
        return bound

    def _feed_node(self, key: Any) -> Node:
        if isinstance(key, str):
            try:
                node = self.graph.get(key.removesuffix(":0"))
            except GraphError as e:
                raise FeedError(f"cannot feed {key!r}: {e}") from None
        elif isinstance(key, Node):
            node = key
        else:
            raise FeedError(f"feed keys are placeholders or their names, got {type(key).__name__}")
        if node.graph is not self.graph:
            raise FeedError(f"cannot feed {node!r}: it belongs to another graph than the session's")
        if node.op != "placeholder":
            raise FeedError(f"cannot feed {node!r}: only placeholders are fed")
        return node

    def load_variables(self, values: Mapping[Node, Any]) -> None:
        """Set variables to ``values`` (converted to each variable's dtype), all or none.

        Raises:  GraphError for a node that is not a variable of this graph; ShapeError naming the
                 variable and both shapes on a shape mismatch.
        """
        staged: dict[Node, np.ndarray] = {}
        for node, value in values.items():
            if node.op != "variable" or node.graph is not self.graph:
                raise GraphError(f"{node!r} is not a variable of this session's graph")
            arr = np.array(value, dtype=node.dtype.np)
            if arr.shape != node.shape:
                raise ShapeError(f"variable {node.name!r} has shape {node.shape}, the value has "
                                 f"{arr.shape}")
            staged[node] = arr
        self._state.update(staged)

    @property
    def run_counter(self) -> int:
        """Successful runs that drew random numbers: random ops key on it; checkpoints save it."""
        return self._counter

    @run_counter.setter
    def run_counter(self, value: int) -> None:
        self._counter = int(value)

    def reset(self) -> None:
        """Forget all variable values (they re-initialise on next use) and the run counter."""
        self._state.clear()
        self._counter = 0

    def close(self) -> None:
        """Release variable state and compiled code."""
        self._state.clear()
        self._cache.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ByName:
    """An executable of an optimised copy of the graph, addressed with the original's nodes
    (placeholders and variables keep their names through every pass)."""

    def __init__(self, exe: Executable, graph: Graph) -> None:
        self.exe = exe
        self.fetches = exe.fetches
        self.placeholders = tuple(graph.get(p.name or "") for p in exe.placeholders)
        self.variables = tuple(graph.get(v.name or "") for v in exe.variables)
        self.random = exe.random
        self._feed_map = dict(zip(self.placeholders, exe.placeholders))
        self._var_pairs = tuple(zip(self.variables, exe.variables))
        self._back = {o: n for n, o in self._var_pairs}

    def _feeds(self, feeds: Mapping[Node, np.ndarray]) -> dict[Node, np.ndarray]:
        """Feeds keyed by the optimised graph's placeholders."""
        return {self._feed_map[p]: v for p, v in feeds.items() if p in self._feed_map}

    def _state(self, state: Mapping[Node, np.ndarray]) -> dict[Node, np.ndarray]:
        """Variable values keyed by the optimised graph's variables."""
        return {o: state[n] for n, o in self._var_pairs}

    def profile(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
                counter: int, repeat: int) -> list[KernelTime]:
        """The wrapped executable's ``profile`` (the nodes it names are the optimised
        graph's)."""
        return self.exe.profile(  # type: ignore[attr-defined, no-any-return]
            self._feeds(feeds), self._state(state), counter, repeat)

    def run(self, feeds: Mapping[Node, np.ndarray], state: Mapping[Node, np.ndarray],
            counter: int) -> Any:
        result = self.exe.run(self._feeds(feeds), self._state(state), counter)
        if not result.updates:
            return result
        back = self._back
        return RunResult(result.outputs, {back[v]: x for v, x in result.updates.items()})


def _convert_feed(node: Node, value: Any) -> np.ndarray:
    if isinstance(value, Node):
        raise FeedError(f"feed for {node.name!r} is a symbolic tensor; feed concrete arrays")
    arr = np.asarray(value)
    target = node.dtype.np
    same = arr.dtype == target
    if not same and not np.can_cast(arr.dtype, target, "same_kind"):
        raise FeedError(f"placeholder {node.name!r} expects {node.dtype.name}, got {arr.dtype} "
                        "(only same-kind conversions are made implicitly)")
    if arr.shape != node.shape and (arr.ndim != node.ndim or any(
            d is not None and d != g for d, g in zip(node.shape, arr.shape))):
        raise FeedError(f"placeholder {node.name!r} expects shape {node.type_str}, got "
                        f"{arr.dtype}{list(arr.shape)}")
    if same and arr.flags.c_contiguous:
        return arr  # the common case, without np.array's argument parsing
    return np.array(arr, dtype=target, order="C", copy=None)


def _flatten(fetches: Fetches, graph: Graph) -> tuple[list[Node], Callable[[list[Any]], Any]]:
    """Flatten nested fetches into a node list plus a function rebuilding the structure."""
    if isinstance(fetches, Node):  # the common case, without a closure per level
        return [_own(fetches, graph)], _first
    flat: list[Node] = []

    def walk(f: Any) -> Callable[[Any], Any]:
        if isinstance(f, (Node, str)):
            node = _own(graph.get(f) if isinstance(f, str) else f, graph)
            i = len(flat)
            flat.append(node)
            return lambda out: out[i]
        if isinstance(f, Mapping):
            parts = {k: walk(v) for k, v in f.items()}
            return lambda out: type(f)({k: p(out) for k, p in parts.items()})  # type: ignore[call-arg]
        if isinstance(f, (list, tuple)):
            items = [walk(v) for v in f]
            if hasattr(f, "_fields"):  # namedtuple
                return lambda out: type(f)(*(p(out) for p in items))
            return lambda out: type(f)(p(out) for p in items)
        raise GraphError(f"cannot fetch {f!r} of type {type(f).__name__}")

    return flat, walk(fetches)


def _own(node: Node, graph: Graph) -> Node:
    if node.graph is not graph:
        raise GraphError(f"fetch {node!r} belongs to another graph than the session's")
    return node


def _first(outputs: list[Any]) -> Any:
    return outputs[0]
