"""What a layer's config says about training only: frozen weights, regularizers and constraints.

Inference never reads this record; `fit` does, so a converted model trains as Keras would train it.
Built-in L1 / L2 / L1L2 regularizers and MaxNorm / NonNeg / UnitNorm / MinMaxNorm constraints are
recorded with their numbers; anything else (OrthogonalRegularizer, custom classes) is listed as
unsupported, which `fit` refuses and inference ignores.
"""
import math

from kconvert.schema import ConversionError
from kconvert.schema.shapes import RECURRENT_GATES

# Keras config key prefix -> graph weight name, per graph op (Keras's `{prefix}_regularizer`).
_WEIGHT_PREFIXES = {
    "dense": {"kernel": "kernel", "bias": "bias"},
    "conv2d": {"kernel": "kernel", "bias": "bias"},
    "depthwise_conv2d": {"depthwise": "kernel", "bias": "bias"},
    "separable_conv2d": {"depthwise": "depthwise_kernel", "pointwise": "pointwise_kernel", "bias": "bias"},
    "conv1d": {"kernel": "kernel", "bias": "bias"},
    "embedding": {"embeddings": "embeddings"},
    "batch_norm": {"gamma": "gamma", "beta": "beta"},
    "layer_norm": {"gamma": "gamma", "beta": "beta"},
    **{op: {"kernel": "kernel", "recurrent": "recurrent_kernel", "bias": "bias"} for op in RECURRENT_GATES},
}
# Keras's serialized regularizer classes (and string shortcuts) -> (l1, l2) from their config.
_REGULARIZERS = {
    "L1": lambda c: (c.get("l1", 0.01), 0.0), "l1": lambda c: (0.01, 0.0),
    "L2": lambda c: (0.0, c.get("l2", 0.01)), "l2": lambda c: (0.0, 0.01),
    "L1L2": lambda c: (c.get("l1", 0.0), c.get("l2", 0.0)),
}
# Keras's constraint classes -> (graph kind, {parameter: Keras default}).
_CONSTRAINTS = {
    "MaxNorm": ("max_norm", {"max_value": 2.0, "axis": 0}),
    "NonNeg": ("non_neg", {}),
    "UnitNorm": ("unit_norm", {"axis": 0}),
    "MinMaxNorm": ("min_max_norm", {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}),
}
_CONSTRAINT_ALIASES = {"max_norm": "MaxNorm", "non_neg": "NonNeg", "unit_norm": "UnitNorm",
                       "min_max_norm": "MinMaxNorm"}


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConversionError(f"{what} must be a finite number, got {str(value)[:50]}")
    return float(value)


def _axis(value, what):
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(a, bool) or not isinstance(a, int) or not -8 <= a < 8 for a in items):
        raise ConversionError(f"{what} must be an axis or a list of axes, got {str(value)[:50]}")
    return list(items)


def _builtin(obj):
    """(class name, config) of a serialized Keras object that is not user code, else (None, None)."""
    if isinstance(obj, str):
        return obj, {}
    if not isinstance(obj, dict) or not isinstance(obj.get("class_name"), str):
        return None, None
    module, registered = obj.get("module"), obj.get("registered_name")
    if module is not None and (not isinstance(module, str) or module.split(".")[0] not in ("keras", "tf_keras")):
        return None, None
    if registered is not None and registered != obj["class_name"]:
        return None, None
    config = obj.get("config") or {}
    return obj["class_name"], config if isinstance(config, dict) else None


def _describe(obj):
    name = obj.get("registered_name") or obj.get("class_name") if isinstance(obj, dict) else obj
    return str(name)[:100]


def regularizer(obj, what):
    """{'l1', 'l2'} of a Keras regularizer config, or None if it is not a built-in L1/L2/L1L2."""
    cls, config = _builtin(obj)
    if cls not in _REGULARIZERS or config is None:
        return None
    l1, l2 = _REGULARIZERS[cls](config)
    return {"l1": _number(0.0 if l1 is None else l1, f"{what} l1"),
            "l2": _number(0.0 if l2 is None else l2, f"{what} l2")}


def constraint(obj, what):
    """The graph form of a Keras constraint config, or None if it is not a supported built-in."""
    cls, config = _builtin(obj)
    cls = _CONSTRAINT_ALIASES.get(cls, cls)
    if cls not in _CONSTRAINTS or config is None:
        return None
    kind, defaults = _CONSTRAINTS[cls]
    out = {"kind": kind}
    for key, default in defaults.items():
        value = config.get(key, default)
        out[key] = _axis(value, f"{what} axis") if key == "axis" else _number(value, f"{what} {key}")
    return out


def _weights_part(cfg, op, prefix, weight_names, record, where):
    """Add the regularizers, constraints and freezing of one Keras layer config's weights to `record`."""
    for keras_prefix, weight in _WEIGHT_PREFIXES[op].items():
        graph_weight = prefix + weight
        if graph_weight not in weight_names:
            continue  # e.g. bias with use_bias=False: Keras ignores its regularizer too
        if cfg.get("trainable", True) is False:
            record.setdefault("non_trainable", []).append(graph_weight)
        for kind, parse, key in (("regularizer", regularizer, "regularizers"),
                                 ("constraint", constraint, "constraints")):
            option = f"{keras_prefix}_{kind}"
            obj = cfg.get(option)
            if obj is None:
                continue
            value = parse(obj, f"{where} {option}")
            if value is None:
                text = f"{option} {_describe(obj)} on {graph_weight}"
                record.setdefault("unsupported", []).append((text, graph_weight))
            elif kind == "constraint" or value["l1"] or value["l2"]:
                record.setdefault(key, {})[graph_weight] = value


def _activity(cfg, record, where):
    """Add the layer's activity regularizer (on its output) to `record`."""
    obj = cfg.get("activity_regularizer")
    if obj is None:
        return
    value = regularizer(obj, f"{where} activity_regularizer")
    if value is None:
        record.setdefault("unsupported", []).append((f"activity_regularizer {_describe(obj)}", None))
    elif value["l1"] or value["l2"]:
        record["activity_regularizer"] = value


def training_record(call, op, attrs, weight_names, model_trainable=True):
    """The node's `training` record (frozen weights, regularizers, constraints), or None if it has none."""
    cfg, where = call.config, f"layer {call.name!r} ({call.class_name})"
    record = {}
    if op == "bidirectional":
        inner = cfg.get("layer") or {}
        back = cfg.get("backward_layer") or inner  # Keras copies the forward config when none is given
        for prefix, side in (("forward_", inner), ("backward_", back)):
            side_cfg = side.get("config") or {}
            _weights_part(side_cfg, attrs["layer"], prefix, weight_names, record, where)
            if side_cfg.get("activity_regularizer") is not None:
                # Keras applies it to each direction's own output, before the merge.
                record.setdefault("unsupported", []).append((f"activity_regularizer on the {prefix[:-1]} layer", None))
    elif op in _WEIGHT_PREFIXES:
        _weights_part(cfg, op, "", weight_names, record, where)
    _activity(cfg, record, where)
    if not model_trainable or cfg.get("trainable", True) is False:
        record["non_trainable"] = list(weight_names)  # a frozen layer freezes all its weights (and sublayers')
    elif "non_trainable" in record:
        record["non_trainable"] = [w for w in weight_names if w in record["non_trainable"]]
    frozen = record.get("non_trainable", [])
    # Keras neither regularizes nor constrains a frozen weight, so what it cannot do there does not matter.
    unsupported = [text for text, weight in record.pop("unsupported", []) if weight not in frozen]
    if unsupported:
        record["unsupported"] = unsupported
    if not frozen:
        record.pop("non_trainable", None)
    return record or None
