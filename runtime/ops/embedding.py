"""Embedding lookup and its sparse-accumulating backward."""
import numpy as np

from kconvert.schema.errors import InputDataError


def checked_ids(ids, table):
    """ids as integers (floats truncated, as Keras's cast), or InputDataError for NaN, Inf or ids outside the table."""
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
    return table[checked_ids(ids, table)]


def embedding_train(ids, attrs, weights, mask, ctx):
    """Lookup keeping the integer ids."""
    table = weights["embeddings"]
    ids = checked_ids(ids, table)
    return table[ids], {"ids": ids}


class IndexedRows:
    """A sparse gradient: one row per lookup (repeated ids repeat), like TensorFlow's IndexedSlices.

    Keras 3 optimizers square and clip these rows one lookup at a time before duplicates are summed,
    so the optimizers need the rows, not just their dense sum.
    """

    def __init__(self, ids, rows, shape):
        self.ids, self.rows, self.shape = ids, rows, tuple(shape)

    def dense(self, rows=None):
        """Sum the rows (or `rows`, same layout) into a dense array of the table's shape."""
        rows = self.rows if rows is None else rows
        out = np.zeros(self.shape, dtype=rows.dtype)
        if len(self.ids):
            # Sum each id's rows: a stable sort groups the ids and reduceat sums each group. ~6x faster
            # than np.add.at here; reduceat's summation order differs from one-by-one addition in the
            # last bits (TensorFlow's segment sums promise no order either).
            order = np.argsort(self.ids, kind="stable")
            ids = self.ids[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            out[ids[starts]] = np.add.reduceat(rows[order], starts, axis=0)
        return out

    def with_rows(self, rows):
        """The same ids with other rows."""
        return IndexedRows(self.ids, rows, self.shape)

    def __array__(self, dtype=None, copy=None):
        dense = self.dense()
        return dense if dtype is None else dense.astype(dtype)


def embedding_backward(dy, cache, attrs, weights):
    """The table's gradient as IndexedRows (accumulated on use); ids get no gradient."""
    table = weights["embeddings"]
    return None, {"embeddings": IndexedRows(cache["ids"].reshape(-1), dy.reshape(-1, table.shape[1]), table.shape)}
