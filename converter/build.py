"""Build a kgraph document (plus weight arrays and assets) from a parsed Keras model file."""
import re

import numpy as np

from kconvert.schema import FORMAT, FORMAT_VERSION, ConversionError, GraphError
from kconvert.schema.shapes import MERGE_OPS, infer

from .keras_layers import LAYER_CONVERTERS
from .optimizer_state import optimizer_state as read_optimizer_state
from .topology import read_topology
from .training_record import training_record
from .vocabulary import normalize_vocabulary, read_vocabulary_file

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:/-]")
# A Keras config is untrusted data: a field of the wrong type or a missing one surfaces as one of these
# while it is read, and is reported as a malformed config of the layer being read.
_CONFIG_FAILURES = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


def malformed(where, exc):
    """The ConversionError for a config that has the wrong shape."""
    detail = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {str(exc)[:150]}"
    return ConversionError(f"{where}: malformed config ({detail})")
_INPUT_DTYPES = {"float16": "float32", "float32": "float32", "float64": "float32", "bfloat16": "float32",
                 "int8": "int32", "int16": "int32", "int32": "int32", "int64": "int32", "uint8": "int32",
                 "uint16": "int32", "string": "string"}


class _Context:
    """What layer converters may ask: Keras major version and vocabularies."""

    def __init__(self, keras_file, vocabulary_path, text_layers):
        self.file = keras_file
        self.major = keras_file.major
        self.vocabulary_path = vocabulary_path
        self.text_layers = text_layers
        self.input_shape = None  # the shape of the layer being converted's (first) input

    def vocabulary_for(self, call):
        """Full id -> token table for a TextVectorization layer ('' and '[UNK]' first)."""
        cfg = call.config
        if self.vocabulary_path is not None:
            if self.text_layers > 1:
                raise ConversionError("--vocabulary is ambiguous: the model has several TextVectorization layers")
            tokens, where = read_vocabulary_file(self.vocabulary_path), f"--vocabulary {self.vocabulary_path}"
        elif isinstance(cfg.get("vocabulary"), list):
            tokens, where = cfg["vocabulary"], "the layer config"
        elif self.file.kind == "keras":
            tokens, where = None, None
            for sub in ("", "_lookup_layer/"):
                text = self.file.asset_text(f"assets/layers/{call.saving_key}/{sub}vocabulary.txt")
                if text is not None:
                    tokens, where = text.splitlines(), f"{self.file.name} assets"
                    break
            if tokens is None:
                raise ConversionError(f"layer {call.name!r} (TextVectorization): {self.file.name} has no vocabulary "
                                      "asset; pass --vocabulary FILE (one token per line)")
        else:
            raise ConversionError(
                f"layer {call.name!r} (TextVectorization): a legacy .h5 file does not store the vocabulary; "
                "pass --vocabulary FILE (layer.get_vocabulary(), one token per line) or save the model as .keras")
        return normalize_vocabulary(call, tokens, where)


def _node_name(keras_name, used):
    name = _NAME_BAD.sub("_", keras_name)[:200] or "layer"
    if not re.match(r"[A-Za-z0-9_]", name):
        name = "_" + name
    base, i = name, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def build_graph(keras_file, vocabulary=None, labels=None, tool_version="0", optimizer_state=True, notes=None):
    """Return (document, {weight file: array}, {asset file: list of str}) for a Keras model file.
    With optimizer_state, a trained model's optimizer state goes into the training record; `notes`, if
    given, is called with a line saying why a saved state was left out."""
    try:
        topo = read_topology(keras_file.model_config)
    except _CONFIG_FAILURES as exc:
        raise malformed("the model config", exc) from None
    text_layers = sum(c.class_name == "TextVectorization" for c in topo.calls)
    ctx = _Context(keras_file, vocabulary, text_layers)
    used, names = set(), {}
    tensors, masks = {}, {}   # tensor -> (shape, dtype); tensor -> mask tensor or ("pending", ids)
    doc_inputs, nodes, weight_files, asset_files = [], [], {}, {}

    for spec in topo.inputs:
        if spec["sparse"] or spec["ragged"]:
            raise ConversionError(f"input {spec['name']!r} is sparse or ragged; only dense inputs are supported")
        dtype = _INPUT_DTYPES.get(spec["dtype"] if isinstance(spec["dtype"], str) else None)
        if dtype is None:
            raise ConversionError(f"input {spec['name']!r} has dtype {spec['dtype']!r}; supported: float, int, string")
        shape = [None] + list(spec["shape"][1:])  # dims were checked by the topology reader
        name = names[spec["name"]] = _node_name(spec["name"], used)
        doc_inputs.append({"name": name, "dtype": dtype, "shape": shape})
        tensors[name] = (tuple(shape), dtype)

    def materialize_mask(tensor):
        mask = masks.get(tensor)
        if isinstance(mask, tuple):  # ("pending", ids tensor, embedding layer): make the not_equal node now
            _, ids, layer = mask
            mask_name = _node_name(f"{ids}/mask", used)
            nodes.append({"name": mask_name, "op": "not_equal", "inputs": [ids], "attrs": {"value": 0},
                          "weights": {}, "source": {"layer": layer, "class_name": "Embedding(mask_zero=True)"}})
            tensors[mask_name] = (tensors[ids][0], "bool")
            for key, value in list(masks.items()):
                if value == mask:
                    masks[key] = mask_name
            mask = mask_name
        return mask

    for call in topo.calls:
        converter = LAYER_CONVERTERS.get(call.class_name)
        if converter is None:
            _refuse_layer(call)
        for ref in call.inputs + ([call.mask] if call.mask else []):
            if ref not in names:
                raise ConversionError(f"layer {call.name!r} reads {ref!r}, which is not defined before it")
        arrays = [] if call.is_op_layer else keras_file.layer_weights(call.name, call.saving_key, call.class_name)
        ctx.input_shape = tensors[names[call.inputs[0]]][0] if call.inputs else None
        try:
            result = converter(call, [a for _, a in arrays], ctx)
        except _CONFIG_FAILURES as exc:
            raise malformed(f"layer {call.name!r} ({call.class_name})", exc) from None
        op, attrs, weights, mask_rule = result[:4]
        assets = result[4] if len(result) > 4 else {}
        if len(call.inputs) != 1 and op not in MERGE_OPS:
            raise ConversionError(f"layer {call.name!r} ({call.class_name}) takes {len(call.inputs)} inputs; "
                                  "only single-input layers and merges (Add, Concatenate, ...) are supported")
        sources = [names[ref] for ref in call.inputs]
        x = sources[0]
        node_name = _node_name(call.name, used)
        node = {"name": node_name, "op": op, "inputs": sources, "attrs": attrs, "weights": {},
                "source": {"layer": call.name, "class_name": call.class_name}}
        mask = names[call.mask] if call.mask else next((masks[s] for s in sources if masks.get(s) is not None), None)
        if mask is not None and mask_rule in ("consume", "honour"):
            node["mask"] = materialize_mask(x) if not call.mask else mask
        elif mask is not None and mask_rule == "refuse":
            raise ConversionError(f"layer {call.name!r} ({call.class_name}) receives a sequence mask; "
                                  f"a masked {call.class_name} is not supported")
        try:
            shape, dtype, expected = infer(node_name, op, attrs, [tensors[s][0] for s in sources],
                                           [tensors[s][1] for s in sources])
        except GraphError as exc:
            raise ConversionError(f"layer {call.name!r} ({call.class_name}): {exc}") from None
        except _CONFIG_FAILURES as exc:
            raise malformed(f"layer {call.name!r} ({call.class_name})", exc) from None
        weight_sources = dict(zip((n for n in weights), (s for s, _ in arrays)))
        for key, array in weights.items():
            if tuple(array.shape) != tuple(expected[key]):
                raise ConversionError(f"layer {call.name!r} ({call.class_name}): weight {key} has shape "
                                      f"{tuple(array.shape)} in the file, expected {tuple(expected[key])}")
            file = f"weights/{len(nodes):03d}_{op}_{key}.npy"
            weight_files[file] = np.ascontiguousarray(array, dtype="<f4")
            node["weights"][key] = {"file": file, "shape": list(array.shape), "dtype": "float32",
                                    "sha256": "", "source": weight_sources[key]}
        if not call.is_op_layer:
            try:
                record = training_record(call, op, attrs, list(weights), topo.trainable)
            except _CONFIG_FAILURES as exc:
                raise malformed(f"layer {call.name!r} ({call.class_name})", exc) from None
            if record:
                node["training"] = record
        for key, values in assets.items():
            file = f"assets/{len(nodes):03d}_{op}_{key}.json"
            asset_files[file] = values
            node.setdefault("assets", {})[key] = {"file": file, "sha256": "", "count": len(values),
                                                  "source": f"{call.name} vocabulary"}
        nodes.append(node)
        names[call.name] = node_name
        tensors[node_name] = (shape, dtype)
        if mask_rule in ("pass", "honour") and mask is not None:
            masks[node_name] = masks.get(x) if not call.mask else mask
        elif mask_rule == "consume" and "mask" in node and _returns_sequences(attrs):
            masks[node_name] = node["mask"]  # Keras: the RNN's output mask is its input mask
        elif mask_rule == "produce":
            masks[node_name] = ("pending", x, call.name)

    outputs = []
    for out, node_index, tensor_index in topo.outputs:
        if node_index != 0 or tensor_index != 0:
            raise ConversionError(f"model output [{out!r}, {node_index}, {tensor_index}] is not the first output "
                                  "of its layer; multi-output layers are not supported")
        if out not in names:
            raise ConversionError(f"model output {out!r} is not a layer of the model")
        shape, dtype = tensors[names[out]]
        spec = {"name": names[out], "dtype": dtype, "shape": list(shape)}
        mask = materialize_mask(names[out]) if names[out] in masks else None
        if mask is not None:  # Keras weights this output's loss and metrics by its mask
            spec["mask"] = mask
        outputs.append(spec)
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "producer": {"tool": "kconvert", "tool_version": tool_version, "source_framework": "keras",
                     "source_framework_version": keras_file.keras_version, "source_backend": keras_file.backend,
                     "source_file": keras_file.name, "source_sha256": keras_file.sha256,
                     "source_model_name": topo.name if isinstance(topo.name, str) else None},
        "inputs": doc_inputs, "outputs": outputs, "nodes": nodes,
    }
    if labels is not None:
        _check_labels(labels, outputs)
        doc["labels"] = list(labels)
    training = _training_config(keras_file.training_config)
    if training:
        doc["training"] = training
        state, files, note = read_optimizer_state(keras_file, training, nodes) if optimizer_state else (None, {}, None)
        if state is not None:
            training["optimizer_state"] = state
            weight_files.update(files)
        if note and notes is not None:
            notes(note)
    return doc, weight_files, asset_files


def _returns_sequences(attrs):
    """Whether a mask-consuming node's output is still a sequence (a recurrent layer with return_sequences;
    not a global pooling)."""
    return bool(attrs.get("forward", attrs).get("return_sequences", False))


def _refuse_layer(call):
    if call.class_name == "Lambda":
        raise ConversionError(f"layer {call.name!r} is a Lambda layer: it holds Python code, which kconvert never "
                              "runs; replace it with built-in layers")
    if call.is_op_layer:
        raise ConversionError(f"layer {call.name!r} is the Keras operation {call.class_name}, which is not supported")
    known = sorted(k for k in LAYER_CONVERTERS if k != "NotEqual")
    raise ConversionError(f"layer {call.name!r} has class {call.class_name!r}, which kconvert does not support "
                          f"(custom and unknown classes are refused); supported: {', '.join(known)}")


def _check_labels(labels, outputs):
    if len(outputs) != 1:
        raise ConversionError("--labels needs a model with exactly one output")
    width = outputs[0]["shape"][-1]
    if width is not None and len(labels) != width:
        raise ConversionError(f"--labels has {len(labels)} names but the output has {width} classes")
    if len(set(labels)) != len(labels) or any(not l for l in labels):
        raise ConversionError("--labels must be distinct, non-empty names")


def _scalars(config):
    return {k: v for k, v in (config or {}).items()
            if isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))}


def _training_config(cfg):
    """Loss, optimizer and metrics the model was compiled with (scalars only), or None."""
    if not isinstance(cfg, dict):
        return None
    loss = cfg.get("loss")
    out = {"loss": None, "loss_config": None, "optimizer": None, "metrics": None}
    if isinstance(loss, str):
        out["loss"] = loss
    elif isinstance(loss, dict) and isinstance(loss.get("class_name"), str):
        out["loss"] = loss["class_name"]
        out["loss_config"] = _scalars(loss.get("config"))
    opt = cfg.get("optimizer") or cfg.get("optimizer_config")
    if isinstance(opt, dict) and isinstance(opt.get("class_name"), str):
        config = opt.get("config") if isinstance(opt.get("config"), dict) else {}
        out["optimizer"] = {"class_name": opt["class_name"].split(">")[-1], "config": _scalars(config)}
        schedule = config.get("learning_rate")
        if isinstance(schedule, dict) and isinstance(schedule.get("class_name"), str):
            # A LearningRateSchedule: kept (numbers and lists of numbers), so fit follows it rather than a default.
            inner = schedule.get("config") if isinstance(schedule.get("config"), dict) else {}
            lists = {k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, list)
                     and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}
            out["optimizer"]["config"]["learning_rate"] = {"class_name": schedule["class_name"][:200],
                                                           "config": {**_scalars(inner), **lists}}
    for key in ("metrics", "weighted_metrics"):  # Keras 3: ["accuracy"]; tf-keras: [["accuracy"]] (per output)
        names = cfg.get(key)
        if isinstance(names, list) and (names or key == "metrics"):  # weighted_metrics: only when compiled with some
            flat = [_metric_name(m, key) for item in names for m in (item if isinstance(item, list) else [item])]
            out[key] = [m for m in flat if m is not None]
    return out if any(v is not None for v in out.values()) else None


def _metric_name(item, key):
    """A compiled metric's name: the string itself, or, in a tf-keras .h5 file, the name of the MeanMetricWrapper
    it was compiled into (tf-keras calls a weighted metric that shares a plain one's name 'weighted_<name>')."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and item.get("class_name") == "MeanMetricWrapper":
        name = (item.get("config") if isinstance(item.get("config"), dict) else {}).get("name")
        if isinstance(name, str):
            return name.removeprefix("weighted_") if key == "weighted_metrics" else name
    return None
