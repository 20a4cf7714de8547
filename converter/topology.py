"""Keras model configs (Sequential / Functional, Keras 2 and 3) to one ordered list of layer calls."""
import re
from dataclasses import dataclass, field

from kconvert.schema import ConversionError
from kconvert.schema import limits

# Keras 3 functional configs record some operations (e.g. the mask of Embedding(mask_zero=True))
# as op-layers from these modules; they carry no weights and are not in the weights file.
OP_LAYER_MODULES = ("keras.src.ops.numpy", "keras.src.ops.core", "keras.src.ops.math", "keras.ops")


@dataclass
class LayerCall:
    """One call of one Keras layer in topological order."""
    name: str
    class_name: str
    config: dict
    inputs: list                 # tensor names (Keras layer names of the producers)
    mask: str = None             # explicit mask tensor name (Keras 3 functional `mask=` kwarg)
    constants: list = field(default_factory=list)  # non-tensor positional args (op layers)
    saving_key: str = None       # key of the layer in a .keras weights file
    is_op_layer: bool = False


@dataclass
class Topology:
    """Inputs (name, config), ordered layer calls, and outputs as (layer name, node index, tensor index)."""
    inputs: list
    calls: list
    outputs: list
    name: str = None
    trainable: bool = True       # False when the whole model was frozen (model.trainable = False)


def snake_case(name):
    """Keras's to_snake_case, used for .keras weight keys."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unwrap(obj, what):
    if not isinstance(obj, dict) or not isinstance(obj.get("class_name"), str) or not isinstance(obj.get("config", {}), dict):
        raise ConversionError(f"{what} is not a Keras layer config (expected class_name and config)")
    module, registered = obj.get("module"), obj.get("registered_name")
    name = obj.get("name") or obj.get("config", {}).get("name")
    if isinstance(name, str):
        what = f"layer {name[:100]!r}"
    # Built-in Keras classes serialise with a keras module and no registered name (or their own class
    # name). Anything else names user code, which kconvert never imports: refuse it by name.
    if module is not None and (not isinstance(module, str) or module.split(".")[0] not in ("keras", "tf_keras")):
        raise ConversionError(f"{what} ({obj['class_name']}) comes from module {str(module)[:100]!r}, not Keras; "
                              "custom classes are not supported")
    if registered is not None and registered != obj["class_name"]:
        raise ConversionError(f"{what} ({obj['class_name']}) is the registered custom object {str(registered)[:100]!r}; "
                              "custom classes are not supported")
    return obj


def read_topology(model_config):
    """Return the Topology of a Keras model config."""
    model_config = _unwrap(model_config, "model config")
    cls = model_config["class_name"]
    config = model_config.get("config", {})
    if cls == "Sequential":
        topo = _sequential(config, model_config)
    elif cls in ("Functional", "Model"):
        topo = _functional(config)
    else:
        raise ConversionError(
            f"model class {cls!r} is not supported: only Sequential and Functional models can be converted "
            "(subclassed models have no declarative config)")
    _assign_saving_keys(topo, sequential=cls == "Sequential")
    topo.trainable = config.get("trainable", True) is not False
    return topo


def _input_spec(layer_cfg, name):
    shape = layer_cfg.get("batch_shape", layer_cfg.get("batch_input_shape"))
    if shape is None:
        raise ConversionError(f"input {name!r} has no batch_shape; rebuild the model with keras.Input(shape=...)")
    check_shape(shape, f"input {name!r}")
    return {"name": name, "shape": list(shape), "dtype": layer_cfg.get("dtype", "float32"),
            "sparse": layer_cfg.get("sparse", False), "ragged": layer_cfg.get("ragged", False)}


def check_shape(shape, what):
    """A Keras batch shape: a list of at most limits.MAX_RANK entries, each null or a positive int."""
    if not isinstance(shape, list) or not 1 <= len(shape) <= limits.MAX_RANK:
        raise ConversionError(f"{what} has shape {str(shape)[:100]}; expected a list of 1 to {limits.MAX_RANK} dimensions")
    for dim in shape[1:]:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim < 2 ** 31):
            raise ConversionError(f"{what} has an invalid dimension {str(dim)[:50]} in shape {str(shape)[:100]}")


def _check_count(layers):
    if len(layers) > limits.MAX_LAYERS:
        raise ConversionError(f"the model has {len(layers)} layers, more than the {limits.MAX_LAYERS} allowed")


def _sequential(config, model_config):
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ConversionError("Sequential model config has no layers")
    _check_count(layers)
    layers = [_unwrap(l, f"layer {i} of the Sequential model") for i, l in enumerate(layers)]
    if layers[0]["class_name"] == "InputLayer":
        cfg = layers[0]["config"]
        inputs = [_input_spec(cfg, cfg.get("name", "input"))]
        layers = layers[1:]
    else:
        first = layers[0]["config"]
        shape = first.get("batch_input_shape") or first.get("batch_shape") or config.get("build_input_shape") \
            or (model_config.get("build_config") or {}).get("input_shape")
        if shape is None:
            raise ConversionError("the Sequential model was never built (no input shape in its config); "
                                  "add keras.Input(shape=...) as its first layer and save it again")
        check_shape(shape, "the model input")
        dtype = "string" if layers[0]["class_name"] == "TextVectorization" else "float32"
        inputs = [{"name": "input", "shape": list(shape), "dtype": dtype, "sparse": False, "ragged": False}]
    calls, previous = [], inputs[0]["name"]
    for layer in layers:
        name = layer["config"].get("name")
        if not isinstance(name, str) or not name:
            raise ConversionError(f"a {layer['class_name']} layer of the Sequential model has no name")
        calls.append(LayerCall(name, layer["class_name"], layer["config"], [previous]))
        previous = name
    return Topology(inputs, calls, [(previous, 0, 0)], config.get("name"))


def _tensor_ref(arg, layer_name):
    """Producer layer name of a Keras 3 `__keras_tensor__` arg or a Keras 2 [name, node, index, kwargs] ref."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        history = arg.get("config", {}).get("keras_history")
    elif isinstance(arg, list) and len(arg) >= 3 and isinstance(arg[0], str):
        history = arg[:3]
    else:
        return None
    if not (isinstance(history, list) and len(history) == 3 and isinstance(history[0], str)):
        raise ConversionError(f"layer {layer_name!r} has a malformed inbound tensor reference")
    if history[1] != 0 or history[2] != 0:
        raise ConversionError(f"layer {layer_name!r} uses output {history[1]}/{history[2]} of layer {history[0]!r}: "
                              "shared layers and multi-output layers are not supported")
    return history[0]


def _functional(config):
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ConversionError("Functional model config has no layers")
    _check_count(layers)
    inputs, calls = [], []
    for i, layer in enumerate(layers):
        layer = _unwrap(layer, f"layer {i} of the model")
        name = layer.get("name") or layer["config"].get("name")
        if not isinstance(name, str) or not name:
            raise ConversionError(f"layer {i} ({layer['class_name']}) has no name")
        nodes = layer.get("inbound_nodes", [])
        if layer["class_name"] == "InputLayer":
            inputs.append(_input_spec(layer["config"], name))
            continue
        if layer["class_name"] in ("Sequential", "Functional", "Model"):
            raise ConversionError(f"layer {name!r} is a nested {layer['class_name']} model; nested models are not "
                                  "supported: build the model flat")
        if len(nodes) != 1:
            raise ConversionError(f"layer {name!r} ({layer['class_name']}) is called {len(nodes)} times; "
                                  "shared or unused layers are not supported")
        node = nodes[0]
        mask, constants, refs = None, [], []
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            args = node.get("args", [])
            kwargs = node.get("kwargs", {}) or {}
            if len(args) == 1 and isinstance(args[0], list) and args[0] and _tensor_ref(args[0][0], name):
                args = args[0]  # merge layers take one list of tensors
            for arg in args:
                ref = _tensor_ref(arg, name)
                (refs if ref is not None else constants).append(ref if ref is not None else arg)
            if kwargs.get("mask") is not None:
                mask = _tensor_ref(kwargs["mask"], name)
                if mask is None:
                    raise ConversionError(f"layer {name!r} has a mask argument that is not a tensor")
        elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            for arg in node:
                ref = _tensor_ref(arg, name)
                if ref is None:
                    raise ConversionError(f"layer {name!r} has a malformed inbound node")
                refs.append(ref)
                kwargs = arg[3] if len(arg) > 3 and isinstance(arg[3], dict) else {}
                if kwargs.get("mask") is not None:
                    mask = _tensor_ref(kwargs["mask"], name)
        else:
            raise ConversionError(f"layer {name!r} has a malformed inbound node")
        module = layer.get("module") or ""
        calls.append(LayerCall(name, layer["class_name"], layer["config"], refs, mask, constants,
                               is_op_layer=module.startswith(OP_LAYER_MODULES)))
    if not inputs:
        raise ConversionError("the model has no InputLayer")
    outputs = [_output_name(o, check_index=False) for o in _as_list(config.get("output_layers"))]
    input_names = [_output_name(o) for o in _as_list(config.get("input_layers"))]
    order = {spec["name"]: spec for spec in inputs}
    if sorted(input_names) != sorted(order):
        raise ConversionError("the model's input_layers do not match its InputLayers")
    return Topology([order[n] for n in input_names], calls, outputs, config.get("name"))


def _as_list(value):
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int):
        return [value]  # a single [name, 0, 0] ref, as Keras 3 writes one output
    if not isinstance(value, list) or not value:
        raise ConversionError("the model config has no input_layers/output_layers")
    return value


def _output_name(ref, check_index=True):
    """Layer name of a model input/output ref; outputs are index-checked after layer conversion, so that
    a layer refused for its options (e.g. Bidirectional merge_mode=None) gets that message first."""
    if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str)):
        raise ConversionError(f"malformed model input/output reference {ref!r}")
    if check_index and (ref[1] != 0 or ref[2] != 0):
        raise ConversionError(f"model input {ref!r} is not the first output of its layer; not supported")
    return ref[0] if check_index else tuple(ref)


def _assign_saving_keys(topo, sequential):
    """Give each layer the key Keras 3 uses in model.weights.h5: snake_case(class) plus a per-class counter."""
    used = {}
    if not sequential:
        used["input_layer"] = len(topo.inputs) - 1  # Functional models count their InputLayers too
    for call in topo.calls:
        if call.is_op_layer:
            continue
        base = snake_case(call.class_name)
        if base in used:
            used[base] += 1
            call.saving_key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            call.saving_key = base
