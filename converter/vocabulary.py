"""TextVectorization vocabularies: reading --vocabulary files and normalising to a full id table."""
import json
import os

from kconvert.schema import ConversionError
from kconvert.schema import limits

PAD, OOV = "", "[UNK]"


def read_vocabulary_file(path):
    """Tokens from a .txt (one per line, as layer.get_vocabulary() lists them) or a .json array."""
    try:
        size = os.path.getsize(path)
        if size > limits.MAX_ASSET_BYTES:
            raise ConversionError(f"vocabulary file {path} is larger than {limits.MAX_ASSET_BYTES} bytes")
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        raise ConversionError(f"vocabulary file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConversionError(f"vocabulary file {path} is not UTF-8 text") from None
    if path.endswith(".json"):
        try:
            tokens = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"vocabulary file {path} is not valid JSON: {exc}") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConversionError(f"vocabulary file {path} must hold a JSON array of strings")
        return tokens
    lines = text.splitlines()  # as Keras reads its own vocabulary.txt assets
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def normalize_vocabulary(call, tokens, where):
    """Return the id -> token table with '' (padding, id 0) and '[UNK]' (OOV, id 1) first."""
    tokens = [str(t) for t in tokens]
    if tokens[:1] == [PAD]:
        tokens = tokens[1:]
    if tokens[:1] == [OOV]:
        tokens = tokens[1:]
    if PAD in tokens or OOV in tokens:
        raise ConversionError(f"layer {call.name!r} (TextVectorization): the vocabulary from {where} has '' or "
                              "'[UNK]' after its first two entries")
    if len(set(tokens)) != len(tokens):
        raise ConversionError(f"layer {call.name!r} (TextVectorization): the vocabulary from {where} repeats tokens")
    table = [PAD, OOV] + tokens
    cfg = call.config
    max_tokens, size = cfg.get("max_tokens"), cfg.get("vocabulary_size")
    if isinstance(max_tokens, int) and len(table) > max_tokens:
        raise ConversionError(f"layer {call.name!r} (TextVectorization): the vocabulary from {where} has "
                              f"{len(table)} entries but the layer's max_tokens is {max_tokens}")
    if isinstance(size, int) and size != len(table):
        raise ConversionError(f"layer {call.name!r} (TextVectorization): the vocabulary from {where} has "
                              f"{len(table)} entries (with '' and '[UNK]') but the model was saved with {size}")
    return table
