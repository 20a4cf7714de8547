"""A node's weights for one predict call, with the arrays derived from them computed once per call."""
import threading


class RunWeights(dict):
    """A node's weights (name -> array, as every op takes them) for one predict call, with a memo of arrays
    derived from them, such as Winograd's transformed kernel. predict runs each batch in slices, one per thread,
    so without it each slice of each batch would derive the same array again (0.6 ms per slice on the benchmark
    CNN). The memo lives for one call only: set_weights and fit change weights between calls."""

    def __init__(self, weights):
        super().__init__(weights)
        self._derived = {}
        self._lock = threading.Lock()  # the slices' threads share it: each array is computed once

    def derived(self, key, compute):
        """The array stored under `key`, from compute() on first use."""
        with self._lock:
            if key not in self._derived:
                self._derived[key] = compute()
            return self._derived[key]


def derived(weights, key, compute):
    """weights.derived(key, compute) for RunWeights; compute() for a plain dict (training, direct op calls)."""
    return weights.derived(key, compute) if isinstance(weights, RunWeights) else compute()
