"""Embedding lookup."""
import numpy as np

from kconvert.schema.errors import InputDataError


def embedding(ids, attrs, weights, mask=None):
    """Rows of the table: ids (B, ...) -> (B, ..., output_dim); ids are truncated to integers like Keras's cast."""
    table = weights["embeddings"]
    if ids.dtype.kind == "f":
        if not np.all(np.isfinite(ids)):
            raise InputDataError("embedding ids contain NaN or Inf")
        ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise InputDataError(
            f"embedding id {int(ids.min()) if ids.min() < 0 else int(ids.max())} is outside "
            f"[0, {table.shape[0]}): the input does not match this model's vocabulary")
    return table[ids]
