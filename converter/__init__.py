"""Keras model files (.keras, .h5; Keras 2 and 3) to kgraph folders, without TensorFlow."""
import os
from importlib import metadata

from kconvert.schema import ConversionError, GraphError, validate_document
from kconvert.schema.summary import format_summary

from .build import build_graph
from .keras_file import KerasFile
from kconvert.schema.folder import write_graph

__all__ = ["ConversionError", "convert", "default_output_dir"]


def tool_version():
    """The installed kconvert version."""
    try:
        return metadata.version("kconvert")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def default_output_dir(model_path):
    """Where `kconvert MODEL` writes without -o: MODEL's stem plus '.kgraph', next to the current folder."""
    stem = os.path.splitext(os.path.basename(os.fspath(model_path)))[0] or "model"
    return os.path.join(os.getcwd(), f"{stem}.kgraph")


def convert(model_path, out_dir=None, *, vocabulary=None, labels=None, force=False, summary=None,
            optimizer_state=True, notes=None):
    """Convert a Keras model file to a graph folder; returns the written graph.json path.

    `summary`, if given, is called with the model.summary()-style table text. With optimizer_state, a
    trained model's saved optimizer state (iteration count, moments) is kept for `fit` to continue from;
    `notes`, if given, is called with a line saying why a saved state was left out.
    """
    out_dir = out_dir or default_output_dir(model_path)
    if os.path.lexists(out_dir) and not force:  # fail before any work
        raise ConversionError(f"{os.path.abspath(out_dir)} already exists; pass --force to replace it or choose another -o")
    keras_file = KerasFile(model_path)
    doc, weight_files, asset_files = build_graph(keras_file, vocabulary=vocabulary, labels=labels,
                                                 tool_version=tool_version(), optimizer_state=optimizer_state,
                                                 notes=notes)
    try:
        path = write_graph(doc, weight_files, asset_files, out_dir, force=force)
    except GraphError as exc:  # the converter's own output failed validation or the folder is taken
        raise ConversionError(str(exc)) from None
    if summary is not None:
        summary(format_summary(doc, validate_document(doc)))
    return path
