"""Every exception graphnn raises on purpose.

Build-time errors (``ShapeError``, ``DTypeError``, ``AttrError``) are raised by the line of user
code that builds the offending node; their message names the op, the node it would have become
and the offending input types, e.g.::

    ShapeError: matmul (node %3): inner dimensions differ: 784 vs 100
      inputs: %x: f32[32,784], %w: f32[100,128]

Each class also derives from the matching builtin (``ValueError``, ``TypeError``), so code that
catches builtins keeps working.
"""

from __future__ import annotations


class GraphnnError(Exception):
    """Base class of every graphnn error."""


class ShapeError(GraphnnError, ValueError):
    """An op was given input shapes it cannot combine (raised when the node is built)."""


class DTypeError(GraphnnError, TypeError):
    """An op was given a dtype it does not support, or mixed dtypes (raised at build time)."""


class AttrError(GraphnnError, ValueError):
    """An op attribute is missing, unknown, or of the wrong type or value (build time)."""


class GraphError(GraphnnError, ValueError):
    """Misuse of graphs: nodes from two graphs mixed, a duplicate name, an unknown op."""


class FeedError(GraphnnError, ValueError):
    """A feed is missing, unknown, or has the wrong shape or dtype (raised by ``Session.run``)."""


class ExecutionError(GraphnnError, RuntimeError):
    """A backend failed while running a graph; the message names the node that failed."""


class ParseError(GraphnnError, ValueError):
    """The text form of a graph could not be read back; the message names line and column."""


class VerificationError(GraphnnError, AssertionError):
    """``verify(graph)`` found a broken invariant (a pass or a parser produced a bad graph)."""


class SerializationError(GraphnnError, ValueError):
    """A checkpoint or saved-model file is damaged, foreign, or does not match the model."""


class TrainingError(GraphnnError, RuntimeError):
    """Training stopped: a non-finite loss, named with its epoch and step."""
