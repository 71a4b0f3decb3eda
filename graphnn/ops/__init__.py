"""Op families, each registering its ops in ``graphnn.ops.registry`` on import."""

from graphnn.ops import api, registry
from graphnn.ops.registry import OpDef, all_ops, get_op, make_node, name_scope

__all__ = ["OpDef", "all_ops", "api", "get_op", "make_node", "name_scope", "registry"]
