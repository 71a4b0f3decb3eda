"""Every op-building function, in one namespace (re-exported as ``graphnn.*``)."""

from graphnn.ops.conv import (
    conv, conv1d, conv2d, conv3d, conv_transpose, conv_transpose1d, conv_transpose2d,
    conv_transpose3d,
)
from graphnn.ops.elementwise import (
    abs, add, cast, ceil, celu, clip, cos, div, elu, equal, erf, exp, expm1, floor, gelu, greater,
    greater_equal, hard_sigmoid, hard_swish, hard_tanh, identity, leaky_relu, less, less_equal,
    log, log1p, logical_and, logical_not, logical_or, logical_xor, maximum, minimum, mish, mul,
    neg, not_equal, pow, reciprocal, relu, round, rsqrt, selu, sigmoid, sign, silu, sin, softplus,
    softsign, sqrt, sub, tanh, where,
)
from graphnn.ops.linalg import dense, einsum, gemm, matmul
from graphnn.ops.nn import (
    batch_norm, dropout, group_norm, instance_norm, layer_norm, rms_norm,
    scaled_dot_product_attention,
)
from graphnn.ops.pool import (
    adaptive_avg_pool, adaptive_max_pool, avg_pool, avg_pool1d, avg_pool2d, avg_pool3d,
    global_avg_pool, global_max_pool, max_pool, max_pool1d, max_pool2d, max_pool3d,
)
from graphnn.ops.reduce import (
    argmax, argmin, log_softmax, logsumexp, max, mean, min, prod, softmax, std, sum, var,
)
from graphnn.ops.shape import (
    broadcast_to, cat, concat, expand_dims, flatten, gather, getitem, one_hot, pad, permute,
    reshape, slice_, split, squeeze, stack, take, tile, transpose, unsqueeze,
)
from graphnn.ops.source import as_node, constant, placeholder, variable
from graphnn.ops.state import assign, assign_add, global_variables_initializer, group

__all__ = [name for name in dir() if not name.startswith("_")]
