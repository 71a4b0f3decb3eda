"""Checkpoints: every variable of a session (weights, buffers, optimizer slots, learning rate and
step) plus the session's run counter, in one ``.npz`` file written atomically.

The file is written to a temporary name in the same directory, flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows), so a crash never leaves a truncated
checkpoint. Loading checks every name and shape first and changes nothing on a mismatch.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphnn.errors import SerializationError
from graphnn.ir import Node

FORMAT = "graphnn-checkpoint-1"
_META = "__graphnn_meta__"


def write_npz_atomic(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
                     meta: Mapping[str, Any]) -> None:
    """Write ``arrays`` and the JSON ``meta`` as one npz file, atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            payload: dict[str, Any] = dict(arrays)
            payload[_META] = np.frombuffer(json.dumps(dict(meta)).encode(), np.uint8)
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path: str | os.PathLike[str], expected_format: str
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta of a file written by ``write_npz_atomic``.

    Raises:  SerializationError for a missing, damaged or foreign file (never pickles).
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except FileNotFoundError:
        raise SerializationError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, OSError, KeyError, UnicodeDecodeError, EOFError) as e:
        raise SerializationError(f"{path} is not a graphnn file or is damaged "
                                 f"({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SerializationError(f"{path} holds {found!r}, expected a {expected_format!r} file")
    return arrays, meta


def save_checkpoint(path: str | os.PathLike[str], session: Any,
                    variables: Sequence[Node] | None = None, **meta: Any) -> None:
    """Save ``variables`` (all of the session's graph by default) and the run counter."""
    nodes = list(variables) if variables is not None else session.graph.variables
    values = session.run(nodes)
    arrays = {str(n.name): v for n, v in zip(nodes, values)}
    write_npz_atomic(path, arrays, {"format": FORMAT, "run_counter": session.run_counter, **meta})


def load_checkpoint(path: str | os.PathLike[str], session: Any,
                    variables: Sequence[Node] | None = None) -> dict[str, Any]:
    """Restore variables and the run counter; returns the metadata saved with them.

    Raises:  SerializationError naming missing or unexpected variables, or a variable whose
             shape differs (with both shapes); nothing is changed then.
    """
    arrays, meta = read_npz(path, FORMAT)
    nodes = {str(n.name): n
             for n in (variables if variables is not None else session.graph.variables)}
    missing, unexpected = sorted(set(nodes) - set(arrays)), sorted(set(arrays) - set(nodes))
    if missing or unexpected:
        raise SerializationError(f"{path} does not match the model: missing {missing}, "
                                 f"unexpected {unexpected}")
    for name, node in nodes.items():
        if arrays[name].shape != node.shape:
            raise SerializationError(f"{path}: variable {name!r} has shape {arrays[name].shape} in "
                                     f"the checkpoint but {node.shape} in the model")
    session.load_variables({node: arrays[name] for name, node in nodes.items()})
    session.run_counter = int(meta.get("run_counter", 0))
    return meta
