"""Registry of runtime op implementations, keyed by catalogue op name."""
from kconvert.schema.catalogue import load_catalogue

from . import conv, dense, embedding, recurrent, text

OPS = {
    "dense": dense.dense,
    "activation": dense.activation,
    "relu": dense.relu,
    "leaky_relu": dense.leaky_relu,
    "softmax": dense.softmax,
    "rescaling": dense.rescaling,
    "dropout": dense.dropout,
    "flatten": dense.flatten,
    "not_equal": dense.not_equal,
    "conv2d": conv.conv2d,
    "max_pool2d": conv.max_pool2d,
    "avg_pool2d": conv.avg_pool2d,
    "global_avg_pool2d": conv.global_avg_pool2d,
    "global_max_pool2d": conv.global_max_pool2d,
    "embedding": embedding.embedding,
    "simple_rnn": recurrent.simple_rnn,
    "lstm": recurrent.lstm,
    "bidirectional": recurrent.bidirectional,
    "text_vectorization": text.text_vectorization,
}

# The registry and the catalogue must name the same ops; a mismatch is a programming error.
_missing = set(load_catalogue()["ops"]) ^ set(OPS)
if _missing:
    raise ImportError(f"runtime op registry and catalogue disagree on: {sorted(_missing)}")
