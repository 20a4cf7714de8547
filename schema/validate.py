"""Validation of graph documents: JSON Schema first, then semantics (ops, attrs, shapes, references)."""
import functools
import json
import math
from importlib import resources

from .catalogue import attr_schemas, op_spec, state_weights
from . import limits
from .errors import GraphError
from .shapes import RECURRENT_GATES, infer
from .versioning import check_version

MASKED_OPS = (*RECURRENT_GATES, "bidirectional", "batch_norm", "global_avg_pool1d")


def _jsonschema():
    # Imported on first validation, not with kconvert.runtime: it is 120 ms of a 180 ms import otherwise.
    import jsonschema
    return jsonschema


@functools.lru_cache(maxsize=None)
def _validator():
    jsonschema = _jsonschema()
    text = resources.files(__package__).joinpath("graph.v1.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def graph_schema():
    """Return the graph JSON Schema as a dict."""
    return _validator().schema


def _where(error):
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "document"


def _check_schema(doc):
    errors = sorted(_validator().iter_errors(doc), key=lambda e: (len(list(e.absolute_path)), e.message))
    if errors:
        err = errors[0]
        raise GraphError(f"graph.json does not match the kgraph v1 schema at {_where(err)}: {err.message[:300]}")


def _check_attrs(node_name, op, attrs, what="attrs"):
    schemas = attr_schemas(op)
    missing = sorted(set(schemas) - set(attrs))
    extra = sorted(set(attrs) - set(schemas))
    if missing:
        raise GraphError(f"node {node_name!r} ({op}): missing {what} {', '.join(missing)}; every attribute must be written")
    if extra:
        raise GraphError(f"node {node_name!r} ({op}): unknown {what} {', '.join(extra)}; known: {', '.join(sorted(schemas))}")
    jsonschema = _jsonschema()
    for key, schema in schemas.items():
        try:
            jsonschema.validate(attrs[key], schema)
        except jsonschema.ValidationError as exc:
            raise GraphError(f"node {node_name!r} ({op}): {what} {key}={attrs[key]!r} is invalid: {exc.message[:200]}") from None
    if op == "bidirectional":
        for side in ("forward", "backward"):
            _check_attrs(node_name, attrs["layer"], attrs[side], what=f"{side} attrs")
        if attrs["backward"]["go_backwards"] == attrs["forward"]["go_backwards"]:
            raise GraphError(f"node {node_name!r}: the backward direction must have the opposite go_backwards")


def validate_document(doc):
    """Validate a graph document; return {tensor name: (shape tuple, dtype)} for every tensor."""
    check_version(doc)
    _check_schema(doc)
    tensors = {}
    for spec in doc["inputs"]:
        if "mask" in spec:
            raise GraphError(f"input {spec['name']!r} has a mask; only outputs carry a mask")
        if spec["name"] in tensors:
            raise GraphError(f"input name {spec['name']!r} is used twice")
        tensors[spec["name"]] = (tuple(spec["shape"]), spec["dtype"])
    for node in doc["nodes"]:
        name, op = node["name"], node["op"]
        spec = op_spec(op)
        if name in tensors:
            raise GraphError(f"node name {name!r} is used twice (nodes and inputs share one namespace)")
        for ref in node["inputs"] + ([node["mask"]] if "mask" in node else []):
            if ref not in tensors:
                raise GraphError(
                    f"node {name!r} reads {ref!r}, which is not an input or an earlier node "
                    "(nodes must be in topological order; cycles are not allowed)")
        if spec.get("variadic") and len(node["inputs"]) < 2:
            raise GraphError(f"node {name!r} ({op}) takes two or more inputs, got {len(node['inputs'])}")
        if not spec.get("variadic") and len(node["inputs"]) != len(spec["inputs"]):
            raise GraphError(f"node {name!r} ({op}) takes {len(spec['inputs'])} input(s), got {len(node['inputs'])}")
        _check_attrs(name, op, node["attrs"])
        in_shapes = [tensors[r][0] for r in node["inputs"]]
        in_dtypes = [tensors[r][1] for r in node["inputs"]]
        shape, dtype, weight_shapes = infer(name, op, node["attrs"], in_shapes, in_dtypes)
        if "mask" in node:
            if op not in MASKED_OPS:
                raise GraphError(f"node {name!r} ({op}) does not take a mask; ops that do: {', '.join(MASKED_OPS)}")
            m_shape, m_dtype = tensors[node["mask"]]
            x = in_shapes[0]
            if m_dtype != "bool" or len(m_shape) != 2 or (None not in (m_shape[1], x[1]) and m_shape[1] != x[1]) or (
                    op == "batch_norm" and len(x) != 3):
                rank = " (batch_norm: a rank-3 input)" if op == "batch_norm" else ""
                raise GraphError(
                    f"node {name!r}: mask {node['mask']!r} must be bool (batch, time) matching its input{rank}")
        _check_weights(name, op, node["weights"], weight_shapes)
        if "training" in node:
            _check_training(name, op, node["training"], weight_shapes, dtype)
        expected_assets = set(spec.get("assets", {}))
        if set(node.get("assets", {})) != expected_assets:
            raise GraphError(f"node {name!r} ({op}): assets must be exactly {sorted(expected_assets) or 'none'}")
        tensors[name] = (shape, dtype)
    _check_optimizer_state(doc)
    for out in doc["outputs"]:
        if out["name"] not in tensors:
            raise GraphError(f"output {out['name']!r} is not an input or a node")
        shape, dtype = tensors[out["name"]]
        if out["dtype"] != dtype or len(out["shape"]) != len(shape) or any(
                a is not None and b is not None and a != b for a, b in zip(out["shape"], shape)):
            raise GraphError(f"output {out['name']!r} is declared {out['dtype']} {out['shape']} but the graph gives {dtype} {list(shape)}")
        if "mask" in out:
            _check_output_mask(out, shape, tensors)
    return tensors


def _check_weights(name, op, weights, expected):
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        raise GraphError(f"node {name!r} ({op}): weights missing {missing or '[]'}, unexpected {extra or '[]'}")
    for key, shape in expected.items():
        declared = tuple(weights[key]["shape"])
        if any(d is not None and d != w for d, w in zip(shape, declared)) or len(shape) != len(declared):
            raise GraphError(f"node {name!r} ({op}): weight {key} has shape {list(declared)}, expected {list(shape)}")
        if weights[key]["dtype"] != "float32":
            raise GraphError(f"node {name!r} ({op}): weight {key} must be float32")
        size = 4 * math.prod(declared)
        if size > limits.MAX_TENSOR_BYTES:
            raise GraphError(f"node {name!r} ({op}): weight {key} declares {size} bytes, more than the "
                             f"{limits.MAX_TENSOR_BYTES} allowed")


def _check_training(name, op, record, weight_shapes, out_dtype):
    """The training record names this node's weights, and constraint axes fit their ranks."""
    named = [*record.get("non_trainable", []), *record.get("regularizers", {}), *record.get("constraints", {})]
    unknown = sorted(set(named) - set(weight_shapes))
    if unknown:
        raise GraphError(f"node {name!r} ({op}): training record names weight(s) {unknown} it does not have; "
                         f"its weights: {sorted(weight_shapes) or 'none'}")
    for key, spec in record.get("constraints", {}).items():
        rank = len(weight_shapes[key])
        axes = [a % rank if -rank <= a < rank else None for a in spec.get("axis", [])]
        if None in axes or len(set(axes)) != len(axes):
            raise GraphError(f"node {name!r} ({op}): constraint axis {spec['axis']} does not fit weight {key} "
                             f"of rank {rank}")
    if "activity_regularizer" in record and out_dtype != "float32":
        raise GraphError(f"node {name!r} ({op}): an activity regularizer needs a float32 output, not {out_dtype}")


def _check_optimizer_state(doc):
    """Each optimizer slot belongs to one trainable weight of a node, shaped like it, in a file of its own."""
    state = (doc.get("training") or {}).get("optimizer_state")
    if state is None:
        return
    nodes = {node["name"]: node for node in doc["nodes"]}
    files = {ref["file"] for node in doc["nodes"] for ref in node["weights"].values()}
    seen = set()
    for entry in state["slots"]:
        node, key, slot = nodes.get(entry["node"]), entry["weight"], entry["slot"]
        what = f"optimizer state: {slot} of {entry['node']}/{key}"
        if node is None or key not in node["weights"]:
            raise GraphError(f"{what} names a weight the graph does not have")
        if key in (node.get("training") or {}).get("non_trainable", []):
            raise GraphError(f"{what} belongs to a frozen weight, which no optimizer updates")
        if key in state_weights(node["op"]):
            raise GraphError(f"{what} belongs to a state weight, which its op updates and no optimizer does")
        if (entry["node"], key, slot) in seen:
            raise GraphError(f"{what} is given twice")
        seen.add((entry["node"], key, slot))
        if entry["value"]["shape"] != node["weights"][key]["shape"] or entry["value"]["dtype"] != "float32":
            raise GraphError(f"{what} is {entry['value']['dtype']} {entry['value']['shape']}; the weight is float32 "
                             f"{node['weights'][key]['shape']}")
        if entry["value"]["file"] in files:
            raise GraphError(f"{what} reuses the file {entry['value']['file']}; each array has its own file")
        files.add(entry["value"]["file"])


def _check_output_mask(out, shape, tensors):
    """An output's mask is a bool (batch, time) tensor matching the output's first two dimensions."""
    if out["mask"] not in tensors:
        raise GraphError(f"output {out['name']!r} has mask {out['mask']!r}, which is not an input or a node")
    m_shape, m_dtype = tensors[out["mask"]]
    if m_dtype != "bool" or len(m_shape) != 2 or len(shape) < 3 or (
            None not in (m_shape[1], shape[1]) and m_shape[1] != shape[1]):
        raise GraphError(f"output {out['name']!r}: mask {out['mask']!r} must be a bool (batch, time) tensor "
                         f"matching the output's time axis (output {list(shape)}, mask {m_dtype} {list(m_shape)})")
