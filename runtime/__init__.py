"""Pure-NumPy runtime for kgraph models: `load(path).predict(x)`."""
from kconvert.schema.errors import GraphError, InputDataError, KConvertError

from .allocator import reuse_freed_memory
from .model import Model, load

__all__ = ["GraphError", "InputDataError", "KConvertError", "Model", "load", "reuse_freed_memory"]
