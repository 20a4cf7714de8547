"""Learning actually happens: the demo spec (examples/demo/sentiment.toml) trained from scratch in NumPy on
NusaX-Senti (Indonesian), next to the same spec trained by Keras."""
import numpy as np
import pytest

from helpers import DATA_DIR, DEMO_SPEC
from kconvert.examples.nusax import load_split
from kconvert.examples.runner import build_keras_model, run
from kconvert.examples.specs import load_spec


def test_runtime_learns_from_scratch(tmp_path):
    """Quick variant: NumPy-only training from Keras-default initial weights reaches a useful macro-F1."""
    from kconvert.converter import convert
    from kconvert.runtime import load
    from kconvert.runtime.metrics import macro_f1
    from kconvert.runtime.training import EarlyStopping
    spec = load_spec(DEMO_SPEC)
    training = spec["training"]
    train, valid, test = (load_split(DATA_DIR, s) for s in ("train", "valid", "test"))
    model = build_keras_model(spec, spec["model"], train[0], seed=0, training=training)
    model.save(tmp_path / "untrained.keras")
    runtime = load(convert(str(tmp_path / "untrained.keras"), str(tmp_path / "g"))).reinitialize(seed=0)
    before = macro_f1(np.array(test[1]), runtime.predict(test[0]).argmax(1), [0, 1, 2])
    runtime.fit(train[0], np.array(train[1]), validation_data=(valid[0], np.array(valid[1])),
                epochs=training["epochs"], batch_size=training["batch_size"], seed=0,
                optimizer={"class_name": "adam", "config": {"learning_rate": training["learning_rate"]}},
                early_stopping=EarlyStopping(patience=training["patience"], restore_best_weights=True))
    pred = runtime.predict(test[0]).argmax(1)
    after = macro_f1(np.array(test[1]), pred, [0, 1, 2])
    assert after >= 0.65, f"macro-F1 {after:.4f} after training (was {before:.4f})"
    assert len(set(pred)) == 3, "training collapsed to fewer classes"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three seeds trained twice, Keras and NumPy
def test_runtime_matches_keras_learning_within_005(tmp_path):
    """Full check: mean test macro-F1 over the spec's seeds within 0.05 of the same spec trained by Keras."""
    (row,) = run(load_spec(DEMO_SPEC), DATA_DIR, str(tmp_path), seed=0)["variants"]
    keras_f1, runtime_f1 = row["keras"]["macro_f1"], row["runtime_trained"]["macro_f1"]
    assert row["seeds"] == 3 and abs(runtime_f1 - keras_f1) <= 0.05, (keras_f1, runtime_f1)
