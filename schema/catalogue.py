"""The op catalogue (ops.v1.json): op names, attribute schemas, activation formulas."""
import copy
import functools
import json
from importlib import resources

from .errors import GraphError

_PAIR = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
_NUMBER_OR_LIST = {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 1}]}


@functools.lru_cache(maxsize=None)
def load_catalogue():
    """Return the parsed op catalogue (cached; treat as read-only)."""
    text = resources.files(__package__).joinpath("ops.v1.json").read_text(encoding="utf-8")
    return json.loads(text)


def _resolve(schema, activations):
    """Replace the catalogue's short references (#/pair, #/activation, ...) by JSON Schema."""
    ref = schema.get("$ref")
    if ref == "#/pair":
        return copy.deepcopy(_PAIR)
    if ref == "#/number_or_list":
        return copy.deepcopy(_NUMBER_OR_LIST)
    if ref == "#/activation":
        return {"enum": sorted(activations)}
    return schema


@functools.lru_cache(maxsize=None)
def _attr_schemas(op):
    cat = load_catalogue()
    spec = cat["ops"][op]
    return {name: _resolve(a["schema"], cat["activations"]) for name, a in spec["attrs"].items()}


def op_spec(op):
    """Return the catalogue entry of `op`, or raise GraphError listing the known ops."""
    ops = load_catalogue()["ops"]
    if op not in ops:
        raise GraphError(f"unknown op {op!r}; known ops: {', '.join(sorted(ops))}")
    return ops[op]


def attr_schemas(op):
    """Return {attr name: JSON Schema} for `op` (references resolved)."""
    op_spec(op)
    return _attr_schemas(op)


@functools.lru_cache(maxsize=None)
def state_weights(op):
    """Names of `op`'s state weights (updated by the op in training, never by an optimizer)."""
    return frozenset(name for name, spec in op_spec(op)["weights"].items() if spec.get("state"))


ACTIVATIONS = tuple(sorted(load_catalogue()["activations"]))
