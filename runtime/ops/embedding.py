"""Embedding lookup and its sparse-accumulating backward."""
import numpy as np

from kconvert.schema.errors import InputDataError


def _ids(ids, table):
    if ids.dtype.kind == "f":
        if not np.all(np.isfinite(ids)):
            raise InputDataError("embedding ids contain NaN or Inf")
        ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise InputDataError(f"embedding id {bad} is outside [0, {table.shape[0]}): "
                             "the input does not match this model's vocabulary")
    return ids


def embedding(ids, attrs, weights, mask=None):
    """Rows of the table: ids (B, ...) -> (B, ..., output_dim); ids are truncated to integers like Keras's cast."""
    table = weights["embeddings"]
    return table[_ids(ids, table)]


def embedding_train(ids, attrs, weights, mask, ctx):
    """Lookup keeping the integer ids."""
    table = weights["embeddings"]
    ids = _ids(ids, table)
    return table[ids], {"ids": ids}


def embedding_backward(dy, cache, attrs, weights):
    """Accumulate each row's gradient (np.add.at handles repeated ids); ids get no gradient."""
    table = weights["embeddings"]
    grad = np.zeros_like(table)
    np.add.at(grad, cache["ids"].reshape(-1), dy.reshape(-1, table.shape[1]))
    return None, {"embeddings": grad}
