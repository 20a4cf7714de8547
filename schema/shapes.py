"""Shape and dtype inference for every op, and the weight shapes each op expects.

Shapes are tuples whose first (batch) entry is None; other None entries are free dimensions.
"""
import math

from .errors import GraphError

# The recurrent ops (bidirectional wraps one of them) and their gates: column blocks of the kernels.
RECURRENT_GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
# Ops that take several inputs (Keras's merge layers); every other op takes one.
MERGE_OPS = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate")


def _need_rank(node, shape, rank):
    if len(shape) != rank:
        raise GraphError(f"node {node!r}: expects a rank-{rank} input, got shape {_fmt(shape)}")


def _fmt(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def window_output_size(size, kernel, stride, dilation, padding):
    """Output length of a sliding window (conv or pool) along one axis, as Keras/TF compute it."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    span = (kernel - 1) * dilation + 1
    return (size - span) // stride + 1 if size >= span else 0


def same_padding(size, kernel, stride, dilation):
    """(before, after) padding for 'same' along one axis: the smaller half goes before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _windowed(node, x, kernel, strides, dilation, padding):
    """Output sizes of a conv or pool over the axes between batch and channels (one per kernel entry: 1-D or
    2-D); causal padding is (k - 1) * dilation zeros before, then valid."""
    _need_rank(node, x, len(kernel) + 2)
    out = []
    for size, k, s, d in zip(x[1:-1], kernel, strides, dilation):
        if padding == "causal":
            out.append(window_output_size(None if size is None else size + (k - 1) * d, k, s, d, "valid"))
        else:
            out.append(window_output_size(size, k, s, d, padding))
    if 0 in out:
        raise GraphError(f"node {node!r}: window {kernel} does not fit input {_fmt(x)} with padding 'valid'")
    return tuple(out)


def _affine_weights(attrs, shape):
    """{gamma, beta} shapes of a normalization, each present when its scale / center attr is true."""
    return {w: shape for w, present in (("gamma", attrs["scale"]), ("beta", attrs["center"])) if present}


def _activation_last_dim(node, activation, dim):
    if activation != "glu" or dim is None:
        return dim
    if dim % 2:
        raise GraphError(f"node {node!r}: activation glu needs an even last dimension, got {dim}")
    return dim // 2


def _reshaped(node, x, target):
    """A reshape's target sizes with its -1 worked out; the sample sizes must agree."""
    if target.count(-1) > 1 or 0 in target:
        raise GraphError(f"node {node!r}: reshape target {target} may hold one -1 and no 0")
    size = None if None in x[1:] else math.prod(x[1:])
    known = math.prod(s for s in target if s != -1)
    if size is None:
        return tuple(None if s == -1 else s for s in target)
    if (size % known if -1 in target else size != known):
        raise GraphError(f"node {node!r}: cannot reshape {_fmt(x)} to (None, {', '.join(map(str, target))})")
    return tuple(size // known if s == -1 else s for s in target)


def recurrent_weight_shapes(op, attrs, in_features):
    """Expected kernel / recurrent_kernel / bias shapes of a recurrent op."""
    units = attrs["units"]
    gates = RECURRENT_GATES[op] * units
    shapes = {"kernel": (in_features, gates), "recurrent_kernel": (units, gates)}
    if attrs["use_bias"]:  # a GRU with reset_after keeps an input and a recurrent bias, as Keras does
        shapes["bias"] = (2, gates) if op == "gru" and attrs["reset_after"] else (gates,)
    return shapes


def _merged(node, op, attrs, shapes, dtypes):
    """Output shape of a merge: equal shapes (elementwise), or equal but on `axis` (concatenate)."""
    if any(d != "float32" for d in dtypes):
        raise GraphError(f"node {node!r}: {op} needs float32 inputs, got {', '.join(dtypes)}")
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise GraphError(f"node {node!r}: {op} needs inputs of one rank, got {', '.join(map(_fmt, shapes))}")
    axis = None
    if op == "concatenate":
        axis = attrs["axis"] % rank if -rank <= attrs["axis"] < rank else 0
        if axis == 0:
            raise GraphError(f"node {node!r}: concatenate axis {attrs['axis']} is not a non-batch axis of rank {rank}")
    out = []
    for i, sizes in enumerate(zip(*shapes)):
        known = {s for s in sizes if s is not None}
        if i == axis:
            out.append(None if None in sizes else sum(sizes))
        elif len(known) > 1:
            raise GraphError(f"node {node!r}: {op} inputs differ on axis {i}: {', '.join(map(_fmt, shapes))}")
        else:
            out.append(known.pop() if known and i > 0 else None)
    return tuple(out), "float32", {}


def infer(node, op, attrs, in_shapes, in_dtypes):
    """Return (output shape, output dtype, expected weight shapes) of one node."""
    if op in MERGE_OPS:
        return _merged(node, op, attrs, [tuple(s) for s in in_shapes], list(in_dtypes))
    x = tuple(in_shapes[0])
    float_in = in_dtypes[0] in ("float32",)
    if op not in ("embedding", "not_equal", "text_vectorization") and not float_in:
        raise GraphError(f"node {node!r}: op {op} needs a float32 input, got {in_dtypes[0]}")
    if op == "dense":
        if len(x) < 2 or x[-1] is None:
            raise GraphError(f"node {node!r}: dense needs a known last dimension, got {_fmt(x)}")
        weights = {"kernel": (x[-1], attrs["units"])}
        if attrs["use_bias"]:
            weights["bias"] = (attrs["units"],)
        return x[:-1] + (_activation_last_dim(node, attrs["activation"], attrs["units"]),), "float32", weights
    if op in ("conv2d", "depthwise_conv2d", "separable_conv2d"):
        kh, kw = attrs["kernel_size"]
        h, w = _windowed(node, x, (kh, kw), attrs["strides"], attrs["dilation_rate"], attrs["padding"])
        if x[3] is None:
            raise GraphError(f"node {node!r}: {op} needs a known channel count")
    if op == "conv2d":
        weights = {"kernel": (kh, kw, x[3], attrs["filters"])}
        if attrs["use_bias"]:
            weights["bias"] = (attrs["filters"],)
        out_c = _activation_last_dim(node, attrs["activation"], attrs["filters"])
        return (x[0], h, w, out_c), "float32", weights
    if op == "depthwise_conv2d":
        channels = x[3] * attrs["depth_multiplier"]
        weights = {"kernel": (kh, kw, x[3], attrs["depth_multiplier"])}
        if attrs["use_bias"]:
            weights["bias"] = (channels,)
        return (x[0], h, w, _activation_last_dim(node, attrs["activation"], channels)), "float32", weights
    if op == "separable_conv2d":
        weights = {"depthwise_kernel": (kh, kw, x[3], attrs["depth_multiplier"]),
                   "pointwise_kernel": (1, 1, x[3] * attrs["depth_multiplier"], attrs["filters"])}
        if attrs["use_bias"]:
            weights["bias"] = (attrs["filters"],)
        return (x[0], h, w, _activation_last_dim(node, attrs["activation"], attrs["filters"])), "float32", weights
    if op in ("max_pool2d", "avg_pool2d"):
        h, w = _windowed(node, x, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"])
        return (x[0], h, w, x[3]), "float32", {}
    if op in ("global_avg_pool2d", "global_max_pool2d"):
        _need_rank(node, x, 4)
        return ((x[0], 1, 1, x[3]) if attrs["keepdims"] else (x[0], x[3])), "float32", {}
    if op == "conv1d":
        k = attrs["kernel_size"]
        (out,) = _windowed(node, x, [k], [attrs["strides"]], [attrs["dilation_rate"]], attrs["padding"])
        if x[2] is None:
            raise GraphError(f"node {node!r}: conv1d needs a known channel count")
        weights = {"kernel": (k, x[2], attrs["filters"])}
        if attrs["use_bias"]:
            weights["bias"] = (attrs["filters"],)
        return (x[0], out, _activation_last_dim(node, attrs["activation"], attrs["filters"])), "float32", weights
    if op in ("max_pool1d", "avg_pool1d"):
        (out,) = _windowed(node, x, [attrs["pool_size"]], [attrs["strides"]], [1], attrs["padding"])
        return (x[0], out, x[2]), "float32", {}
    if op in ("global_avg_pool1d", "global_max_pool1d"):
        _need_rank(node, x, 3)
        return ((x[0], 1, x[2]) if attrs["keepdims"] else (x[0], x[2])), "float32", {}
    if op == "reshape":
        return (x[0], *_reshaped(node, x, attrs["target_shape"])), "float32", {}
    if op == "permute":
        if sorted(attrs["dims"]) != list(range(1, len(x))):
            raise GraphError(f"node {node!r}: permute dims {attrs['dims']} are not a permutation of 1..{len(x) - 1}")
        return (x[0], *(x[d] for d in attrs["dims"])), "float32", {}
    if op in ("zero_padding2d", "cropping2d"):
        _need_rank(node, x, 4)
        (top, bottom), (left, right) = attrs["padding" if op == "zero_padding2d" else "cropping"]
        sign = 1 if op == "zero_padding2d" else -1
        h = None if x[1] is None else x[1] + sign * (top + bottom)
        w = None if x[2] is None else x[2] + sign * (left + right)
        if (h is not None and h <= 0) or (w is not None and w <= 0):
            raise GraphError(f"node {node!r}: cropping {attrs.get('cropping')} leaves nothing of input {_fmt(x)}")
        return (x[0], h, w, x[3]), "float32", {}
    if op == "up_sampling2d":
        _need_rank(node, x, 4)
        sh, sw = attrs["size"]
        return (x[0], None if x[1] is None else x[1] * sh, None if x[2] is None else x[2] * sw, x[3]), "float32", {}
    if op == "flatten":
        if len(x) < 2:
            raise GraphError(f"node {node!r}: flatten needs rank >= 2, got {_fmt(x)}")
        rest = x[1:]
        return (x[0], None if None in rest else math.prod(rest)), "float32", {}
    if op == "activation":
        return x[:-1] + (_activation_last_dim(node, attrs["function"], x[-1]),), "float32", {}
    if op == "softmax":
        if not -len(x) <= attrs["axis"] < len(x) or attrs["axis"] % len(x) == 0:
            raise GraphError(f"node {node!r}: softmax axis {attrs['axis']} is not a non-batch axis of {_fmt(x)}")
        return x, "float32", {}
    if op == "batch_norm":
        if not -len(x) <= attrs["axis"] < len(x) or attrs["axis"] % len(x) == 0:
            raise GraphError(f"node {node!r}: batch_norm axis {attrs['axis']} is not a non-batch axis of {_fmt(x)}")
        features = x[attrs["axis"]]
        if features is None:
            raise GraphError(f"node {node!r}: batch_norm needs a known size on axis {attrs['axis']}")
        return x, "float32", {**_affine_weights(attrs, (features,)), "moving_mean": (features,),
                              "moving_variance": (features,)}
    if op == "layer_norm":
        axes = [a % len(x) if -len(x) <= a < len(x) else None for a in attrs["axis"]]
        if None in axes or 0 in axes or len(set(axes)) != len(axes):
            raise GraphError(f"node {node!r}: layer_norm axis {attrs['axis']} are not distinct non-batch axes "
                             f"of {_fmt(x)}")
        sizes = tuple(x[a] for a in axes)  # in the given order, as Keras builds gamma (and reshapes it to broadcast)
        if None in sizes:
            raise GraphError(f"node {node!r}: layer_norm needs known sizes on axis {attrs['axis']}")
        return x, "float32", _affine_weights(attrs, sizes)
    if op == "rescaling":
        for key in ("scale", "offset"):
            value = attrs[key]
            if isinstance(value, list) and len(value) not in (1, x[-1]):
                raise GraphError(f"node {node!r}: rescaling {key} has {len(value)} values for last dimension {x[-1]}")
        return x, "float32", {}
    if op in ("dropout", "relu", "leaky_relu"):
        return x, "float32", {}
    if op == "embedding":
        if in_dtypes[0] not in ("int32", "float32"):
            raise GraphError(f"node {node!r}: embedding ids must be int32 or float32, got {in_dtypes[0]}")
        return x + (attrs["output_dim"],), "float32", {"embeddings": (attrs["input_dim"], attrs["output_dim"])}
    if op == "not_equal":
        return x, "bool", {}
    if op in RECURRENT_GATES:
        _need_rank(node, x, 3)
        if x[2] is None:
            raise GraphError(f"node {node!r}: {op} needs a known feature dimension")
        out = (x[0], x[1], attrs["units"]) if attrs["return_sequences"] else (x[0], attrs["units"])
        return out, "float32", recurrent_weight_shapes(op, attrs, x[2])
    if op == "bidirectional":
        _need_rank(node, x, 3)
        fwd, bwd = attrs["forward"], attrs["backward"]
        if fwd["return_sequences"] != bwd["return_sequences"]:
            raise GraphError(f"node {node!r}: forward and backward must agree on return_sequences")
        if attrs["merge_mode"] != "concat" and fwd["units"] != bwd["units"]:
            raise GraphError(f"node {node!r}: merge_mode {attrs['merge_mode']} needs equal units in both directions")
        weights = {}
        for prefix, sub in (("forward", fwd), ("backward", bwd)):
            for name, shape in recurrent_weight_shapes(attrs["layer"], sub, x[2]).items():
                weights[f"{prefix}_{name}"] = shape
        units = fwd["units"] + bwd["units"] if attrs["merge_mode"] == "concat" else fwd["units"]
        out = (x[0], x[1], units) if fwd["return_sequences"] else (x[0], units)
        return out, "float32", weights
    if op == "text_vectorization":
        if in_dtypes[0] != "string" or not (len(x) == 1 or (len(x) == 2 and x[1] == 1)):
            raise GraphError(f"node {node!r}: text_vectorization needs string input of shape (None,) or (None, 1)")
        return (x[0], attrs["output_sequence_length"]), "int32", {}
    raise GraphError(f"node {node!r}: no shape rule for op {op!r}")
