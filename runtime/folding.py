"""Predict-time folding of a batch_norm into the conv2d, depthwise_conv2d, separable_conv2d, conv1d or dense that
feeds it, and of an activation after it.

In inference a batch_norm is y = z * inv + (beta - moving_mean * inv), inv = gamma / sqrt(moving_variance
+ epsilon), per output channel of the layer z = x (*) kernel + bias before it; so it is the same layer
with kernel * inv and bias (bias - moving_mean) * inv + beta, which saves two passes over its output and lets
a relu (or any activation node) after it run in the layer's own blocks, and a pool after that fuse too
(conv2d_pooled). Only the rounding differs from running the nodes one by one (one multiplication moves from
the output to the kernel, as TensorFlow's graph optimizers fold it). Training never folds: it needs each
node's own output.
"""
import numpy as np

# Ops whose output channels are a kernel's last axis (a depthwise kernel's last two; a separable conv's pointwise
# kernel's) plus a bias.
FOLDING_OPS = ("conv2d", "depthwise_conv2d", "separable_conv2d", "conv1d", "dense")
# The attrs of a relu node that is plain max(x, 0), which a folded layer applies as its activation "relu".
_PLAIN_RELU = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}


def _absorbed_activation(node):
    """The activation name a node amounts to, if it is a plain activation a layer can apply itself; else None."""
    if node["op"] == "activation":
        return node["attrs"]["function"]
    if node["op"] == "relu" and node["attrs"] == _PLAIN_RELU:
        return "relu"
    return None


def fold_plan(doc, sole_readers, tensors):
    """The graph's nodes as predict runs them: each FOLDING_OPS node with a linear activation whose only reader
    is a batch_norm on its last axis (no mask) becomes one node computing both, named after the batch_norm, or
    after the activation node that is the batch_norm's only reader, which it absorbs as well. A folded node
    carries `folds` = (layer name, batch_norm name) for folded_weights."""
    plan, absorbed = [], set()
    for node in doc["nodes"]:
        if node["name"] in absorbed:
            continue
        norm = sole_readers.get(node["name"])
        if (node["op"] not in FOLDING_OPS or node["attrs"]["activation"] != "linear" or norm is None
                or norm["op"] != "batch_norm" or norm["inputs"] != [node["name"]] or "mask" in norm
                or norm["attrs"]["axis"] % len(tensors[node["name"]][0]) != len(tensors[node["name"]][0]) - 1):
            plan.append(node)
            continue
        absorbed.add(norm["name"])
        last, activation = norm, "linear"
        after = sole_readers.get(norm["name"])
        if after is not None and after["inputs"] == [norm["name"]] and _absorbed_activation(after) is not None:
            absorbed.add(after["name"])
            last, activation = after, _absorbed_activation(after)
        plan.append({"name": last["name"], "op": node["op"], "inputs": node["inputs"],
                     "attrs": dict(node["attrs"], activation=activation, use_bias=True),
                     "folds": (node["name"], norm["name"])})
    return plan


def folded_weights(layer_attrs, layer_weights, norm_attrs, norm_weights):
    """The weights of a FOLDING_OPS node with the inference batch_norm after it folded in: kernel (..., F) (or
    (kh, kw, C, m) for F = C * m output channels of a depthwise_conv2d, or a separable_conv2d's pointwise_kernel)
    and bias."""
    inv = np.float32(1) / np.sqrt(norm_weights["moving_variance"] + np.float32(norm_attrs["epsilon"]))  # (F,)
    if norm_attrs["scale"]:
        inv = inv * norm_weights["gamma"]
    bias = layer_weights["bias"] if layer_attrs["use_bias"] else np.float32(0)
    bias = (bias - norm_weights["moving_mean"]) * inv
    if norm_attrs["center"]:
        bias = bias + norm_weights["beta"]
    # In the weights' own dtype (examples/runner.py widens every weight to float64 for its reference)
    if "pointwise_kernel" in layer_weights:  # separable_conv2d: the pointwise kernel makes the output channels
        pointwise = layer_weights["pointwise_kernel"]
        return dict(layer_weights, pointwise_kernel=pointwise * inv, bias=bias.astype(pointwise.dtype, copy=False))
    kernel = layer_weights["kernel"]
    scale = inv.reshape(kernel.shape[2:]) if "depth_multiplier" in layer_attrs else inv  # channel c*m+j: [c, j]
    return {"kernel": kernel * scale, "bias": bias.astype(kernel.dtype, copy=False)}
