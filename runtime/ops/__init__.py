"""Registries of runtime op implementations, keyed by catalogue op name.

OPS[op](x, attrs, weights, mask) -> y is inference (x: a list of arrays for MULTI_INPUT_OPS). TRAIN_OPS[op] = (forward, backward) with
forward(x, attrs, weights, mask, ctx) -> (y, cache) and backward(dy, cache, attrs, weights) -> (dx, grads);
the ops in INPUT_GRADIENT_OPTIONAL also take need_dx=False.
"""
from kconvert.schema.catalogue import load_catalogue
from kconvert.schema.shapes import MERGE_OPS

from . import conv, conv1d, dense, depthwise, embedding, merge, normalization, recurrent, reshaping, text

RESHAPING_OPS = ("reshape", "permute", "zero_padding2d", "cropping2d", "up_sampling2d")

OPS = {
    "dense": dense.dense,
    "activation": dense.activation,
    "relu": dense.relu,
    "leaky_relu": dense.leaky_relu,
    "softmax": dense.softmax,
    "rescaling": dense.rescaling,
    "batch_norm": normalization.batch_norm,
    "layer_norm": normalization.layer_norm,
    **{op: getattr(merge, op) for op in MERGE_OPS},
    "dropout": dense.dropout,
    "flatten": dense.flatten,
    **{op: getattr(reshaping, op) for op in RESHAPING_OPS},
    "not_equal": dense.not_equal,
    "conv2d": conv.conv2d,
    "depthwise_conv2d": depthwise.depthwise_conv2d,
    "separable_conv2d": depthwise.separable_conv2d,
    "max_pool2d": conv.max_pool2d,
    "avg_pool2d": conv.avg_pool2d,
    "global_avg_pool2d": conv.global_avg_pool2d,
    "global_max_pool2d": conv.global_max_pool2d,
    "conv1d": conv1d.conv1d,
    "max_pool1d": conv1d.max_pool1d,
    "avg_pool1d": conv1d.avg_pool1d,
    "global_avg_pool1d": conv1d.global_avg_pool1d,
    "global_max_pool1d": conv1d.global_max_pool1d,
    "embedding": embedding.embedding,
    "simple_rnn": recurrent.simple_rnn,
    "lstm": recurrent.lstm,
    "gru": recurrent.gru,
    "bidirectional": recurrent.bidirectional,
    "text_vectorization": text.text_vectorization,
}


def _caching(forward):
    """Training forward for ops whose backward needs only x and y."""
    def train(x, attrs, weights, mask, ctx):
        y = forward(x, attrs, weights, mask)
        return y, {"x": x, "y": y}
    train.__doc__ = forward.__doc__
    return train


TRAIN_OPS = {
    "dense": (dense.dense_train, dense.dense_backward),
    "activation": (dense.activation_train, dense.activation_backward),
    "relu": (_caching(dense.relu), dense.relu_backward),
    "leaky_relu": (_caching(dense.leaky_relu), dense.leaky_relu_backward),
    "softmax": (dense.softmax_train, dense.softmax_backward),
    "rescaling": (_caching(dense.rescaling), dense.rescaling_backward),
    "batch_norm": (normalization.batch_norm_train, normalization.batch_norm_backward),
    "layer_norm": (normalization.layer_norm_train, normalization.layer_norm_backward),
    **{op: (merge.merge_train(getattr(merge, op)), getattr(merge, f"{op}_backward")) for op in MERGE_OPS},
    "dropout": (dense.dropout_train, dense.dropout_backward),
    "flatten": (_caching(dense.flatten), dense.flatten_backward),
    **{op: (_caching(getattr(reshaping, op)), getattr(reshaping, f"{op}_backward")) for op in RESHAPING_OPS},
    "not_equal": (_caching(dense.not_equal), dense.no_gradient),
    "conv2d": (conv.conv2d_train, conv.conv2d_backward),
    "depthwise_conv2d": (depthwise.depthwise_conv2d_train, depthwise.depthwise_conv2d_backward),
    "separable_conv2d": (depthwise.separable_conv2d_train, depthwise.separable_conv2d_backward),
    "max_pool2d": (_caching(conv.max_pool2d), conv.max_pool2d_backward),
    "avg_pool2d": (_caching(conv.avg_pool2d), conv.avg_pool2d_backward),
    "global_avg_pool2d": (_caching(conv.global_avg_pool2d), conv.global_avg_pool2d_backward),
    "global_max_pool2d": (_caching(conv.global_max_pool2d), conv.global_max_pool2d_backward),
    "conv1d": (conv1d.conv1d_train, conv1d.conv1d_backward),
    "max_pool1d": (_caching(conv1d.max_pool1d), conv1d.max_pool1d_backward),
    "avg_pool1d": (_caching(conv1d.avg_pool1d), conv1d.avg_pool1d_backward),
    "global_avg_pool1d": (conv1d.global_avg_pool1d_train, conv1d.global_avg_pool1d_backward),
    "global_max_pool1d": (_caching(conv1d.global_max_pool1d), conv1d.global_max_pool1d_backward),
    "embedding": (embedding.embedding_train, embedding.embedding_backward),
    "simple_rnn": (recurrent.simple_rnn_train, recurrent.simple_rnn_backward),
    "lstm": (recurrent.lstm_train, recurrent.lstm_backward),
    "gru": (recurrent.gru_train, recurrent.gru_backward),
    "bidirectional": (recurrent.bidirectional_train, recurrent.bidirectional_backward),
}
# Ops that take a list of input arrays and whose backward returns one gradient per input: the merges.
MULTI_INPUT_OPS = frozenset(MERGE_OPS)
# Ops whose backward takes need_dx=False and then skips the input gradient (returns None for it).
INPUT_GRADIENT_OPTIONAL = frozenset({"dense", "conv2d", "conv1d", "depthwise_conv2d", "separable_conv2d"})
# Ops that end in an activation whose logits a cross-entropy loss may use directly (as Keras does).
LOGIT_OPS = {"dense": "activation", "conv2d": "activation", "conv1d": "activation", "depthwise_conv2d": "activation",
             "separable_conv2d": "activation", "activation": "function"}

# The registry and the catalogue must name the same ops; a mismatch is a programming error.
_missing = set(load_catalogue()["ops"]) ^ set(OPS)
if _missing:
    raise ImportError(f"runtime op registry and catalogue disagree on: {sorted(_missing)}")
