"""Train the demo architecture from scratch in Keras and in the NumPy runtime; compare test macro-F1.

    python -m kconvert.examples.learning_check --data-dir ../shared/data [--seeds 0 1] [--epochs 30]

Both use the same spec: TextVectorization (adapted on the train split) -> Embedding(mask_zero) ->
Bidirectional(LSTM) -> Dropout -> Dense(softmax), Adam, batch 32, early stopping on val_loss
(patience 4, best weights restored). Needs TensorFlow (for the Keras side).
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

from kconvert.examples.nusax import load_split
from kconvert.examples.train_demo_model import build_model


def run(data_dir, seed, epochs, units=32, embed_dim=32, seq_len=64, train_limit=None):
    """Return a dict with Keras and runtime macro-F1, accuracy and training seconds for one seed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from kconvert.converter import convert
    from kconvert.runtime import load
    from kconvert.runtime.metrics import macro_f1
    from kconvert.runtime.training import EarlyStopping

    train, valid, test = (load_split(data_dir, s) for s in ("train", "valid", "test"))
    if train_limit:
        train = (train[0][:train_limit], train[1][:train_limit])
    keras.utils.set_random_seed(seed)
    model = build_model(keras, train[0], max_tokens=3000, seq_len=seq_len, embed_dim=embed_dim, units=units)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "untrained.keras")
        model.save(path)
        runtime = load(convert(path, os.path.join(tmp, "graph"))).reinitialize(seed)
    y_train, y_valid, y_test = (np.array(s[1]) for s in (train, valid, test))

    start = time.perf_counter()
    model.fit(tf.constant(train[0]), y_train, validation_data=(tf.constant(valid[0]), y_valid), epochs=epochs,
              batch_size=32, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)])
    keras_seconds = time.perf_counter() - start
    keras_pred = model.predict(tf.constant(test[0]), verbose=0).argmax(1)

    start = time.perf_counter()
    history = runtime.fit(train[0], y_train, validation_data=(valid[0], y_valid), epochs=epochs, batch_size=32,
                          seed=seed, early_stopping=EarlyStopping(monitor="val_loss", patience=4,
                                                                  restore_best_weights=True))
    runtime_seconds = time.perf_counter() - start
    runtime_pred = runtime.predict(test[0]).argmax(1)
    return {"seed": seed,
            "keras": {"macro_f1": macro_f1(y_test, keras_pred, [0, 1, 2]), "accuracy": float(np.mean(keras_pred == y_test)),
                      "seconds": keras_seconds},
            "runtime": {"macro_f1": macro_f1(y_test, runtime_pred, [0, 1, 2]),
                        "accuracy": float(np.mean(runtime_pred == y_test)), "seconds": runtime_seconds,
                        "epochs": len(history.epoch)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("KCONVERT_DATA", "../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    results = [run(args.data_dir, s, args.epochs) for s in args.seeds]
    for r in results:
        print(json.dumps(r))
    k = np.mean([r["keras"]["macro_f1"] for r in results])
    n = np.mean([r["runtime"]["macro_f1"] for r in results])
    print(f"mean test macro-F1: keras {k:.4f}  runtime {n:.4f}  difference {n - k:+.4f}")


if __name__ == "__main__":
    main()
