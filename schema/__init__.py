"""The kgraph format: JSON Schema, op catalogue, validation, versioning and migrations."""
from .errors import ConversionError, GraphError, InputDataError, KConvertError
from .versioning import FORMAT, FORMAT_VERSION, check_version, migrate
from .catalogue import ACTIVATIONS, load_catalogue, op_spec
from .validate import validate_document

__all__ = [
    "ACTIVATIONS", "ConversionError", "FORMAT", "FORMAT_VERSION", "GraphError",
    "InputDataError", "KConvertError", "check_version", "load_catalogue", "migrate",
    "op_spec", "validate_document",
]
