"""Embedding -> recurrent layer at inference: every vocabulary row's input projection, computed once.

A recurrent layer starts with x @ kernel + bias for every live (row, step): one GEMM per batch and
direction. When x is an Embedding's output that nothing else reads, that product is table[ids] with
table = embeddings @ kernel + bias, (vocabulary, gates * units): a gather instead of the GEMM. On the
benchmark BiLSTM (vocabulary 3000 x 128, LSTM 64, 9150 live pairs in a 256-row batch) the GEMM takes
8.1 ms per direction on one core and the gather 0.45 ms.

A table is cached in the model and used only while the weights it was computed from are unchanged,
compared by value at every use (0.05 ms for the 3000 x 128 embeddings), so fit, set_weights or an edit in
place never meets a stale table. Results differ from the plain path in summation order at most (GEMMs of
different heights).
"""
import threading

import numpy as np

from kconvert.schema.shapes import RECURRENT_GATES

from .ops import embedding, recurrent

# The largest table (all directions of one layer) worth keeping in memory.
MAX_TABLE_BYTES = 64 << 20
# Use a table only for batches with ids.size * columns >= MIN_WORK_PER_ROW * vocabulary. Checking the
# weights reads the embeddings (vocabulary x features) twice, the GEMM it replaces does ids.size x
# features x columns multiply-adds; below about this ratio the check costs more than it saves.
MIN_WORK_PER_ROW = 16
RECURRENT_OPS = (*RECURRENT_GATES, "bidirectional")  # the ops an embedding may feed through a table


def _directions(node, attrs, weights):
    """[(direction, layer op, its attrs, its weights)]: one for simple_rnn / lstm / gru, two for bidirectional."""
    if node["op"] != "bidirectional":
        return [(None, node["op"], attrs, weights)]
    return [(d, attrs["layer"], attrs[d], recurrent.direction_weights(weights, d)) for d in ("forward", "backward")]


class ProjectionTables:
    """The cached tables of one model, {recurrent node name: (the weights they came from, tables)}."""

    def __init__(self):
        self._entries = {}
        self._lock = threading.Lock()  # predict's worker threads share the cache

    def run(self, node, ids, attrs, weights, source_weights, mask, pool=None):
        """The recurrent node's output on embedding(ids), through a table when one pays off (`pool`: as for
        recurrent.bidirectional)."""
        embeddings = source_weights["embeddings"]
        ids = embedding.checked_ids(ids, embeddings)
        tables = self._tables(node, ids, attrs, weights, embeddings)
        if tables is None:  # the plain path, on the embedding op's output
            x, projected = embeddings[ids], {}
        else:
            x, projected = None, {d: recurrent.Projected(ids, embeddings, table) for d, table in tables.items()}
        if node["op"] == "bidirectional":
            return recurrent.bidirectional(x, attrs, weights, mask, projected=projected, pool=pool)
        return recurrent.infer_recurrent(node["op"], x, attrs, weights, mask, projected=projected.get(None))

    def _tables(self, node, ids, attrs, weights, embeddings):
        """{direction: table}, built or reused, or None where the plain path is cheaper or a table too big."""
        directions = _directions(node, attrs, weights)
        if any(op not in recurrent.PROJECTED_OPS for _, op, _, _ in directions):
            return None
        columns = sum(w["kernel"].shape[1] for _, _, _, w in directions)
        vocabulary = embeddings.shape[0]
        too_big = vocabulary * columns * embeddings.itemsize > MAX_TABLE_BYTES
        if too_big or ids.size * columns < MIN_WORK_PER_ROW * vocabulary:
            return None
        layout = tuple(a.get("recurrent_activation") for _, _, a, _ in directions)  # decides the gate layout
        sources = [embeddings] + [w[k] for _, _, a, w in directions for k in ("kernel", "bias") if k in w]
        with self._lock:
            entry = self._entries.get(node["name"])
            if (entry is None or entry[0] != layout or len(entry[1]) != len(sources)
                    or not all(np.array_equal(old, new) for old, new in zip(entry[1], sources))):
                tables = {d: recurrent.projection_table(op, embeddings, a, w) for d, op, a, w in directions}
                entry = (layout, [s.copy() for s in sources], tables)
                self._entries[node["name"]] = entry
            return entry[2]
