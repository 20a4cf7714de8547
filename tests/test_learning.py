"""Learning actually happens: the demo spec trained from scratch in NumPy on NusaX-Senti (Indonesian)."""
import os

import numpy as np
import pytest

from helpers import DATA_DIR, ROOT

from kconvert.examples.learning_check import run
from kconvert.examples.nusax import load_split
from kconvert.examples.train_demo_model import build_model


def test_runtime_learns_from_scratch(tmp_path):
    """Quick variant: NumPy-only training from Keras-default initial weights reaches a useful macro-F1."""
    import keras
    from kconvert.converter import convert
    from kconvert.runtime import load
    from kconvert.runtime.metrics import macro_f1
    from kconvert.runtime.training import EarlyStopping
    train, valid, test = (load_split(DATA_DIR, s) for s in ("train", "valid", "test"))
    model = build_model(keras, train[0], max_tokens=3000, seq_len=64, embed_dim=32, units=32)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    model.save(tmp_path / "untrained.keras")
    runtime = load(convert(str(tmp_path / "untrained.keras"), str(tmp_path / "g"))).reinitialize(seed=0)
    before = macro_f1(np.array(test[1]), runtime.predict(test[0]).argmax(1), [0, 1, 2])
    runtime.fit(train[0], np.array(train[1]), validation_data=(valid[0], np.array(valid[1])), epochs=30,
                batch_size=32, seed=0, early_stopping=EarlyStopping(patience=4, restore_best_weights=True))
    pred = runtime.predict(test[0]).argmax(1)
    after = macro_f1(np.array(test[1]), pred, [0, 1, 2])
    assert after >= 0.65, f"macro-F1 {after:.4f} after training (was {before:.4f})"
    assert len(set(pred)) == 3, "training collapsed to fewer classes"


@pytest.mark.slow
def test_runtime_matches_keras_learning_within_005():
    """Full check: mean test macro-F1 over three seeds within 0.05 of the same spec trained by Keras."""
    results = [run(DATA_DIR, seed, epochs=30) for seed in (0, 1, 2)]
    keras_f1 = np.mean([r["keras"]["macro_f1"] for r in results])
    runtime_f1 = np.mean([r["runtime"]["macro_f1"] for r in results])
    assert abs(runtime_f1 - keras_f1) <= 0.05, (keras_f1, runtime_f1, results)
