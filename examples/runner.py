"""Run an experiment spec: per variant, train in Keras, convert and compare, then train the same
architecture from scratch in the NumPy runtime. Writes results.json (report.py renders the rest)."""
import json
import os
import platform
import tempfile
import time

import numpy as np

from kconvert.converter import convert
from kconvert.runtime import load
from kconvert.runtime.metrics import macro_f1
from kconvert.runtime.training import EarlyStopping

from . import cifar10, models, nusax
from .specs import config_key, variants


def load_data(spec, data_dir, quick):
    """{'train': (x, y), 'valid': (x, y), 'test': (x, y)} for the spec's dataset (quick: small subsets)."""
    limits = spec.get("quick", {}) if quick else {}
    if spec["data"]["dataset"] == "nusax":
        language = spec["data"].get("language", "indonesian")
        splits = {s: nusax.load_split(data_dir, s, language) for s in ("train", "valid", "test")}
        out = {s: (list(x), np.array(y)) for s, (x, y) in splits.items()}
        for split, key in (("train", "train_limit"), ("valid", "test_limit"), ("test", "test_limit")):
            if key in limits:
                x, y = out[split]
                out[split] = (x[:limits[key]], y[:limits[key]])
        return out
    per_class = limits.get("train_limit")
    (x_train, y_train), (x_test, y_test) = cifar10.load_cifar10(data_dir, limit_per_class=per_class)
    if "test_limit" in limits:
        x_test, y_test = cifar10._per_class(x_test, y_test, limits["test_limit"])
    n_valid = spec["data"].get("validation_size", 10000) if not quick else max(len(x_train) // 5, 1)
    order = np.random.default_rng(0).permutation(len(x_train))  # a fixed, class-mixed split
    train, valid = order[:-n_valid], order[-n_valid:]
    as_float = lambda a: a.astype(np.float32)  # noqa: E731  (the models rescale 0-255 themselves)
    return {"train": (as_float(x_train[train]), y_train[train]), "valid": (as_float(x_train[valid]), y_train[valid]),
            "test": (as_float(x_test), y_test)}


def _classes(spec):
    return models.NUSAX_CLASSES if spec["data"]["dataset"] == "nusax" else models.CIFAR_CLASSES


def _scores(y, probs, classes):
    pred = probs.argmax(axis=1)
    confusion = np.zeros((classes, classes), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    return {"macro_f1": macro_f1(y, pred, list(range(classes))), "accuracy": float(np.mean(pred == y)),
            "confusion": confusion.tolist(), "predicted_classes": int(len(set(pred.tolist())))}


def _keras_input(x):
    import tensorflow as tf
    return tf.constant(x) if isinstance(x, list) else x


def float64_reference(graph, x):
    """Probabilities of the converted graph computed in float64 (same float32 weights, widened): the
    yardstick that splits a Keras-vs-runtime difference into each side's own float32 rounding."""
    model = load(graph)
    for weights in model.weights.values():
        for key, value in weights.items():
            weights[key] = value.astype(np.float64)
    return model.predict(x, batch_size=256)


def training_settings(spec, quick):
    """The spec's training section, with the quick section's epochs in quick mode."""
    return dict(spec["training"], **({"epochs": spec["quick"]["epochs"]} if quick and "quick" in spec else {}))


def build_keras_model(spec, config, x_train, seed, training):
    """The seeded, compiled Keras model of one variant's config."""
    import keras
    keras.utils.set_random_seed(seed)
    text = spec["data"]["dataset"] == "nusax"
    model = models.build_text_model(keras, config, x_train) if text else models.build_cnn(keras, config)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=models.optimizer(keras, training),
                  metrics=["accuracy"])
    return model


class EpochLog:
    """Callback (Keras-style hooks, also accepted by the runtime's fit) logging one line per epoch."""

    def __init__(self, who, log):
        self.who, self.log, self.start = who, log, time.perf_counter()

    def on_epoch_begin(self, epoch, *_):
        """Start the epoch's clock."""
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        """Log the epoch's metrics and duration."""
        values = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
        self.log(f"      {self.who} epoch {epoch + 1}: {values} ({time.perf_counter() - self.start:.1f}s)")


def fit_keras(model, data, training, log=None):
    """Train in Keras with early stopping on the spec's monitor (best weights restored); return (history, seconds).
    With `log`, one line per epoch goes to it."""
    import keras
    callbacks = [keras.callbacks.EarlyStopping(monitor=training.get("monitor", "val_loss"), patience=training["patience"],
                                               restore_best_weights=True)] if "patience" in training else []
    if log is not None:
        printer = EpochLog("Keras", log)
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_begin=printer.on_epoch_begin,
                                                        on_epoch_end=printer.on_epoch_end))
    x_train, y_train = data["train"]
    start = time.perf_counter()
    history = model.fit(_keras_input(x_train), y_train, batch_size=training["batch_size"],
                        epochs=training["epochs"], verbose=0, callbacks=callbacks,
                        validation_data=(_keras_input(data["valid"][0]), data["valid"][1]))
    return history, time.perf_counter() - start


def run_variant(spec, config, data, seed, quick, log):
    """Train, convert, compare and retrain one model config; return its measurements."""
    training = training_settings(spec, quick)
    classes = _classes(spec)
    x_train, y_train = data["train"]
    model = build_keras_model(spec, config, x_train, seed, training)
    result = {"config": config}
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "untrained.keras"))
        history, keras_train = fit_keras(model, data, training, log=log)
        x_test, y_test = data["test"]
        start = time.perf_counter()
        keras_probs = model.predict(_keras_input(x_test), verbose=0, batch_size=256)
        keras_infer = time.perf_counter() - start
        result["keras"] = {**_scores(y_test, keras_probs, classes), "train_seconds": keras_train,
                           "inference_seconds": keras_infer, "epochs": len(history.epoch),
                           "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
        log(f"    keras: macro-F1 {result['keras']['macro_f1']:.4f}  ({keras_train:.1f}s, {len(history.epoch)} epochs)")

        model.save(os.path.join(tmp, "trained.keras"))
        graph = convert(os.path.join(tmp, "trained.keras"), os.path.join(tmp, "trained"))
        runtime = load(graph)
        start = time.perf_counter()
        probs = runtime.predict(x_test, batch_size=256)
        runtime_infer = time.perf_counter() - start
        exact = float64_reference(graph, x_test)
        # numerics="tensorflow": the same graph with TensorFlow's tanh / sigmoid kernels, Keras's float32 rounding
        tf_probs = runtime.predict(x_test, batch_size=256, numerics="tensorflow")
        keras_pred = keras_probs.argmax(1)
        result["runtime"] = {**_scores(y_test, probs, classes), "inference_seconds": runtime_infer,
                             "agreement": float(np.mean(probs.argmax(1) == keras_pred)),
                             "max_abs_probability_difference": float(np.max(np.abs(probs - keras_probs))),
                             "agreement_tensorflow_numerics": float(np.mean(tf_probs.argmax(1) == keras_pred)),
                             "max_abs_probability_difference_tensorflow_numerics":
                                 float(np.max(np.abs(tf_probs - keras_probs))),
                             "keras_vs_float64": float(np.max(np.abs(keras_probs - exact))),
                             "runtime_vs_float64": float(np.max(np.abs(probs - exact)))}
        log(f"    converted graph: agreement {100 * result['runtime']['agreement']:.2f}%, "
            f"max |dp| {result['runtime']['max_abs_probability_difference']:.2e}, "
            f"with TensorFlow's kernels {result['runtime']['max_abs_probability_difference_tensorflow_numerics']:.2e} "
            f"(vs float64: Keras {result['runtime']['keras_vs_float64']:.2e}, "
            f"runtime {result['runtime']['runtime_vs_float64']:.2e})")

        # From scratch: by default from the very initial weights Keras started from (exported untrained), so
        # the two trainings differ only in backprop, dropout masks and shuffling; "runtime" draws fresh ones.
        scratch = load(convert(os.path.join(tmp, "untrained.keras"), os.path.join(tmp, "untrained")))
        if training.get("initial_weights", "keras") == "runtime":
            scratch.reinitialize(seed)
        stopper = EarlyStopping(monitor=training.get("monitor", "val_loss"), patience=training["patience"],
                                restore_best_weights=True) if "patience" in training else None
        start = time.perf_counter()
        history = scratch.fit(x_train, y_train, epochs=training["epochs"], batch_size=training["batch_size"],
                              validation_data=data["valid"], seed=seed, early_stopping=stopper,
                              loss="sparse_categorical_crossentropy",
                              optimizer={"class_name": training["optimizer"],
                                         "config": models.optimizer_config(training)},
                              metrics=["accuracy"], callbacks=[EpochLog("runtime", log)])
        scratch_train = time.perf_counter() - start
        result["runtime_trained"] = {**_scores(y_test, scratch.predict(x_test, batch_size=256), classes),
                                     "train_seconds": scratch_train, "epochs": len(history.epoch),
                                     "history": history.history}
        log(f"    runtime-trained: macro-F1 {result['runtime_trained']['macro_f1']:.4f}  ({scratch_train:.1f}s)")
    return result


def _aggregate(runs):
    """One variant's result over seeds: means (and std) of the scores, worst case of the conversion checks;
    curves and confusion matrices from the first seed."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in runs[0].items()}
    for source in ("keras", "runtime", "runtime_trained"):
        for metric in ("macro_f1", "accuracy", "train_seconds", "inference_seconds"):
            values = [r[source][metric] for r in runs if metric in r[source]]
            if values:
                out[source][metric] = float(np.mean(values))
                if metric == "macro_f1":
                    out[source]["macro_f1_std"] = float(np.std(values))
                    out[source]["macro_f1_per_seed"] = values
        out[source]["predicted_classes"] = min(r[source]["predicted_classes"] for r in runs)
    for key in ("agreement", "agreement_tensorflow_numerics"):
        out["runtime"][key] = min(r["runtime"][key] for r in runs)
    for key in ("max_abs_probability_difference", "max_abs_probability_difference_tensorflow_numerics",
                "keras_vs_float64", "runtime_vs_float64"):
        out["runtime"][key] = max(r["runtime"][key] for r in runs)
    out["seeds"] = len(runs)
    return out


def first_seed(spec, seed=None):
    """The seed given, else the spec's training.seed, else 0."""
    return seed if seed is not None else spec["training"].get("seed", 0)


def train_model(spec, data_dir, output, variant=None, seed=None, log=print):
    """Train one variant of `spec` (default: its model section) in Keras on the full data, deterministically,
    and save it as the .keras file `output` (written whole or not at all); return its test scores."""
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    configs = {name: config for _, name, config in variants(spec)}
    if variant is not None and variant not in configs:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(configs)}")
    config = configs[variant] if variant is not None else spec["model"]
    seed = first_seed(spec, seed)
    data = load_data(spec, data_dir, quick=False)
    training = training_settings(spec, quick=False)
    log(f"{spec['name']}: training {variant or 'the base model'} in Keras (seed {seed}) on "
        f"{len(data['train'][1])} rows, validating on {len(data['valid'][1])}")
    model = build_keras_model(spec, config, data["train"][0], seed, training)
    history, seconds = fit_keras(model, data, training, log=log)
    x_test, y_test = data["test"]
    scores = _scores(y_test, model.predict(_keras_input(x_test), verbose=0, batch_size=256), _classes(spec))
    folder, name = os.path.split(os.path.abspath(output))
    partial = os.path.join(folder, f".{name}.partial.keras")
    try:
        model.save(partial)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return {"test": scores, "epochs": len(history.epoch), "train_seconds": seconds, "seed": seed}


def _previous_rows(path, header):
    """{config key: finished variant's results} from an earlier results.json made with the same spec, seeds,
    settings and versions; refuses one that differs, since its numbers would not be comparable."""
    try:
        with open(path, encoding="utf-8") as fh:
            previous = json.load(fh)
        mismatch = [key for key in header if previous.get(key) != header[key]]
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot resume from {path}: {exc}; remove it or choose another -o folder") from None
    if mismatch:
        raise ValueError(f"cannot resume from {path}: its {', '.join(mismatch)} differ from this run's; "
                         "remove it or choose another -o folder")
    return {config_key(row["config"]): {k: v for k, v in row.items() if k not in ("group", "variant")}
            for row in previous.get("variants", [])}


def _write_json(path, content):
    """Write JSON atomically: a reader (or an interrupted run) never sees a half-written file."""
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as fh:
        json.dump(content, fh, indent=1)
    os.replace(partial, path)


def run(spec, data_dir, out_dir, quick=False, only=None, seed=None, log=print, seeds=None, resume=False):
    """Run every variant of `spec` (or those named in `only`), each with `seeds` seeds (default: the spec's,
    else 1) starting at `seed` (default: the spec's, else 0); write and return results.json's content.
    results.json is rewritten after every variant; with `resume`, variants it already holds are kept, not rerun."""
    import keras
    import tensorflow as tf
    from kconvert.converter import tool_version

    chosen = [v for v in variants(spec) if not only or v[1] in only]
    if only and len(chosen) != len(set(only)):
        known = ", ".join(v[1] for v in variants(spec))
        raise ValueError(f"unknown variant(s) in --only; known: {known}")
    n_seeds = seeds or spec["training"].get("seeds", 1)
    seed = first_seed(spec, seed)
    header = {"spec": json.loads(json.dumps(spec)), "quick": quick, "seed": seed, "seeds": n_seeds,
              "versions": {"kconvert": tool_version(), "keras": keras.__version__, "tensorflow": tf.__version__,
                           "numpy": np.__version__, "python": platform.python_version()}}
    path = os.path.join(out_dir, "results.json")
    runs = _previous_rows(path, header) if resume and os.path.exists(path) else {}
    # Kept variants stay in the results even when --only names others, so runs can be split and resumed.
    chosen = [v for v in variants(spec) if v in chosen or config_key(v[2]) in runs]

    os.makedirs(out_dir, exist_ok=True)
    log(f"{spec['name']}: loading {spec['data']['dataset']}{' (quick subset)' if quick else ''}")
    data = load_data(spec, data_dir, quick)
    log(f"  train {len(data['train'][1])}, validation {len(data['valid'][1])}, test {len(data['test'][1])}")
    results = {**header, "data_sizes": {k: len(v[1]) for k, v in data.items()}, "variants": []}
    kept = set(runs)
    keyed = [(group, name, config_key(config), config) for group, name, config in chosen]
    for group, name, key, config in keyed:
        if key in kept:
            log(f"  {name} ({group}): kept from the earlier results.json")
        elif key in runs:
            log(f"  {name} ({group}): same model as an earlier variant, results shared")
        else:
            log(f"  {name} ({group})")
            runs[key] = _aggregate([run_variant(spec, config, data, seed + i, quick, log) for i in range(n_seeds)])
        # Every finished or kept variant, also those later in the order, so an interrupted resume loses none.
        results["variants"] = [{"group": g, "variant": n, **runs[k]} for g, n, k, _ in keyed if k in runs]
        _write_json(path, results)
    return results
