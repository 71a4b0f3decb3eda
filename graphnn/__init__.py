"""graphnn: a graph-compiling tensor framework.

Build a static dataflow graph with placeholders, variables and ops, then run it in a Session::

    import numpy as np
    import graphnn as gn

    with gn.Graph("mlp") as g:
        x = gn.placeholder((None, 4), name="x")
        w = gn.variable(np.random.randn(4, 3).astype(np.float32), name="w")
        y = gn.softmax(gn.relu(x @ w))
    print(g)                                    # the text IR
    probs = gn.Session(g).run(y, {x: np.ones((2, 4))})
"""

from graphnn import dtypes, losses, metrics, models, nn, optim, text_ir  # noqa: E402
from graphnn.autodiff import gradients
from graphnn.dot import to_dot
from graphnn.dtypes import DType, as_dtype, bool_, float32, float64, int32, int64
from graphnn.errors import (
    AttrError,
    DTypeError,
    ExecutionError,
    FeedError,
    GraphError,
    GraphnnError,
    ParseError,
    SerializationError,
    ShapeError,
    TrainingError,
    VerificationError,
)
from graphnn.io import load_checkpoint, load_model, save_checkpoint, save_model
from graphnn.ir import ArrayValue, Attrs, Graph, Node, get_default_graph, reset_default_graph
from graphnn.ops.api import *  # noqa: F403 - the op functions are graphnn's public API
from graphnn.ops.api import __all__ as _op_names
from graphnn.ops.registry import all_ops, get_op, name_scope
from graphnn.profiler import KernelTime, Profile
from graphnn.session import Session
from graphnn.text_ir import dump, parse_graph, print_graph
from graphnn.training import (
    Callback,
    EarlyStopping,
    History,
    LearningRateScheduler,
    ModelCheckpoint,
    Trainer,
)
from graphnn.verify import verify

__version__ = "0.1.0"

# Ahead-of-time compilation (imports llvmlite; after __version__, which the library records)
from graphnn.backends.aot import CompiledModel, compile, load_compiled  # noqa: E402

__all__ = [
    "ArrayValue", "AttrError", "Attrs", "DType", "DTypeError", "ExecutionError", "FeedError",
    "Graph", "GraphError", "GraphnnError", "Node", "ParseError", "Session", "ShapeError",
    "SerializationError", "TrainingError", "VerificationError", "all_ops", "as_dtype", "bool_",
    "dtypes", "float32", "float64",
    "get_default_graph", "get_op", "gradients", "int32", "int64", "name_scope", "parse_graph",
    "print_graph",
    "reset_default_graph", "to_dot", "verify", "dump", "losses", "metrics", "nn", "optim",
    "load_checkpoint", "load_model", "save_checkpoint", "save_model", "Callback",
    "EarlyStopping", "History", "LearningRateScheduler", "ModelCheckpoint", "Trainer",
    "CompiledModel", "compile", "load_compiled", "KernelTime", "Profile",
    *_op_names,
]
