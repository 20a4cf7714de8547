"""Pure-NumPy runtime for kgraph models: `load(path).predict(x)`."""
from kconvert.schema.errors import GraphError, InputDataError, KConvertError

from .model import Model, load

__all__ = ["GraphError", "InputDataError", "KConvertError", "Model", "load"]
