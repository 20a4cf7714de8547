"""The saved state of a trained model's optimizer (iteration count, moments), so `fit` continues from it.

Keras saves its optimizer's variables as one ordered list (unnamed in a .keras file): the iteration
count, in Keras 3 the learning rate when it is a number, then the slot variables group by group in
the order the optimizer's build() creates them, each group interleaving its slots per trainable weight
in model.trainable_variables order (the layers' order, each layer's weights in their saved order, frozen
ones left out). keras.models.load_model restores them when their count matches and skips them (with a
warning) when it does not; the converter does the same: a state it cannot place is left out, with a note.
"""
import numpy as np

from kconvert.schema.catalogue import state_weights

from .keras_file import read_counter, read_dataset


def slot_groups(class_name, config, keras_major):
    """The optimizer's slot groups in Keras's build() order, or None for an optimizer kconvert cannot continue."""
    name = class_name.lower()
    if name == "sgd":
        # tf-keras's SGD builds momentum slots whatever its momentum; Keras 3's only when it is not 0.
        return [("momentum",)] if keras_major < 3 or config.get("momentum", 0) != 0 else []
    if name in ("adam", "adamw"):
        return [("momentum", "velocity")] + ([("velocity_hat",)] if config.get("amsgrad") else [])
    if name == "rmsprop":
        return ([("velocity",)] + ([("momentum",)] if (config.get("momentum") or 0) > 0 else [])
                + ([("average_gradient",)] if config.get("centered") else []))
    return None


def _trainable_weights(nodes):
    """(node, weight name) of every trainable weight, in Keras's trainable_variables order."""
    out = []
    for node in nodes:
        frozen = set((node.get("training") or {}).get("non_trainable", [])) | state_weights(node["op"])
        out.extend((node, key) for key in node["weights"] if key not in frozen)
    return out


def optimizer_state(keras_file, training, nodes):
    """(training.optimizer_state or None, {weight file: array}, a note on a state left out or None)."""
    variables = keras_file.optimizer_variables()
    if not variables:
        return None, {}, None
    optimizer = training.get("optimizer") or {}
    config = optimizer.get("config") or {}
    if config.get("is_legacy_optimizer") or "decay" in config:  # tf-keras's legacy optimizers: another layout
        return None, {}, "a tf-keras legacy optimizer's state is not carried; fit starts it afresh"
    groups = slot_groups(str(optimizer.get("class_name", "")), config, keras_file.major)
    if groups is None:
        return None, {}, (f"the state of optimizer {optimizer.get('class_name')!r} is not carried "
                          "(fit continues SGD, Adam, AdamW and RMSprop)")
    source, dataset = variables[0]
    iterations = read_counter(dataset, f"optimizer variable {source} (its iteration count)")
    if iterations == 0:  # never trained (or only built): the same as a fresh optimizer
        return None, {}, None
    # Keras 3 keeps a numeric learning rate as a variable right after the count; a schedule is not one.
    leading = 2 if keras_file.major >= 3 and not isinstance(config.get("learning_rate"), dict) else 1
    weights = _trainable_weights(nodes)
    expected = leading + sum(len(group) for group in groups) * len(weights)
    if len(variables) != expected:
        return None, {}, (f"the optimizer's saved state has {len(variables)} variables where its "
                          f"{len(weights)} trainable weights need {expected}; not carried (Keras skips it too)")
    slots, files = [], {}
    position = leading
    for group in groups:
        for node, key in weights:
            for slot in group:
                source, dataset = variables[position]
                position += 1
                shape = list(getattr(dataset, "shape", None) or [])  # checked before reading: no bigger than its weight
                if shape != node["weights"][key]["shape"]:
                    return None, {}, (f"optimizer variable {source} has shape {shape} where the {slot} of "
                                      f"{node['name']}/{key} would be {node['weights'][key]['shape']}; the optimizer's "
                                      "state is not carried")
                if slot == "momentum" and groups == [("momentum",)] and not config.get("momentum"):
                    continue  # tf-keras's SGD without momentum: built, never used (so not read)
                array = read_dataset(dataset, f"optimizer variable {source}")
                file = f"weights/{len(slots):03d}_optimizer_{slot}.npy"
                files[file] = np.ascontiguousarray(array, dtype="<f4")
                slots.append({"node": node["name"], "weight": key, "slot": slot,
                              "value": {"file": file, "shape": list(array.shape), "dtype": "float32",
                                        "sha256": "", "source": source}})
    return {"iterations": iterations, "slots": slots}, files, None
