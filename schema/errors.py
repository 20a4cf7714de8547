"""One exception hierarchy for the whole project; the CLIs turn it into one-line messages."""


class KConvertError(Exception):
    """Root of every error kconvert raises on purpose (bad input, unsupported model, bad graph)."""


class ConversionError(KConvertError):
    """A Keras model file cannot be converted (unsupported layer or option, malformed file)."""


class GraphError(KConvertError):
    """A graph document or graph folder is invalid (schema, semantics, weight files)."""


class InputDataError(KConvertError):
    """Data passed to a model (arrays, texts, images) does not fit the model's inputs."""
