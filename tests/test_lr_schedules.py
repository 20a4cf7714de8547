"""Learning-rate schedules: recorded from the compiled optimizer, followed by fit as Keras follows them."""
import numpy as np
import pytest

from helpers import keras_module, randomize_weights, save_and_convert
from kconvert.runtime import schedules
from kconvert.schema import InputDataError

SCHEDULES = [
    ("ExponentialDecay", {"initial_learning_rate": 0.05, "decay_steps": 3, "decay_rate": 0.5}),
    ("ExponentialDecay", {"initial_learning_rate": 0.05, "decay_steps": 4, "decay_rate": 0.3, "staircase": True}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.05, "decay_steps": 2, "decay_rate": 0.7}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.05, "decay_steps": 3, "decay_rate": 0.7, "staircase": True}),
    ("PiecewiseConstantDecay", {"boundaries": [3, 7], "values": [0.05, 0.02, 0.005]}),
    ("PolynomialDecay", {"initial_learning_rate": 0.05, "decay_steps": 6, "end_learning_rate": 0.001, "power": 2.0}),
    ("PolynomialDecay", {"initial_learning_rate": 0.05, "decay_steps": 4, "power": 0.5, "cycle": True}),
    ("CosineDecay", {"initial_learning_rate": 0.05, "decay_steps": 8, "alpha": 0.1}),
    ("CosineDecay", {"initial_learning_rate": 0.0, "decay_steps": 8, "warmup_target": 0.05, "warmup_steps": 4}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(SCHEDULES)]


@pytest.mark.parametrize("name,config", SCHEDULES, ids=IDS)
def test_schedule_values_match_keras(name, config):
    K = keras_module("keras3")
    theirs = getattr(K.optimizers.schedules, name)(**config)
    ours = schedules.get({"class_name": name, "config": theirs.get_config()})
    steps = range(25)
    expected = np.array([float(theirs(step)) for step in steps], np.float32)
    actual = np.array([ours(step) for step in steps])
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=2e-7, atol=1e-10)
    assert len(np.unique(expected)) > 2  # the steps cover the schedule's changes


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("name,config", SCHEDULES, ids=IDS)
def test_fit_follows_the_recorded_schedule(name, config, optimizer, tmp_path):
    """The schedule travels in the graph's training record; fit with no optimizer argument matches model.fit."""
    K = keras_module("keras3")
    rng = np.random.default_rng(81)
    model = K.Sequential([K.Input((5,)), K.layers.Dense(6, activation="tanh"), K.layers.Dense(3, activation="softmax")])
    randomize_weights(model, seed=82, scale=0.4)
    schedule = getattr(K.optimizers.schedules, name)(**config)
    model.compile(optimizer=getattr(K.optimizers, optimizer)(learning_rate=schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert runtime.doc["training"]["optimizer"]["config"]["learning_rate"]["class_name"] == name
    x, y = rng.normal(size=(20, 5)).astype(np.float32), rng.integers(0, 3, 20)
    expected = model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0).history
    history = runtime.fit(x, y, epochs=3, batch_size=4, shuffle=False).history
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-4, err_msg=key)
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6, err_msg=str(key))


def test_tf_keras_schedule_is_recorded(tmp_path):
    K = keras_module("tf_keras")
    model = K.Sequential([K.Input((5,)), K.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=K.optimizers.Adam(K.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)),
                  loss="sparse_categorical_crossentropy")
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    record = runtime.doc["training"]["optimizer"]["config"]["learning_rate"]
    assert record["class_name"] == "ExponentialDecay"
    assert {k: record["config"][k] for k in ("initial_learning_rate", "decay_steps", "decay_rate")} == \
        {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}


def test_unsupported_schedule_is_refused_by_name_and_can_be_overridden(tmp_path):
    """Before schedules were recorded, fit silently used Adam's default 0.001 instead."""
    K = keras_module("keras3")
    model = K.Sequential([K.Input((5,)), K.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=K.optimizers.Adam(K.optimizers.schedules.CosineDecayRestarts(0.1, 5)),
                  loss="sparse_categorical_crossentropy")
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x, y = np.ones((4, 5), np.float32), np.zeros(4, int)
    with pytest.raises(InputDataError, match="schedule 'CosineDecayRestarts' is not supported.*learning_rate=<number>"):
        runtime.fit(x, y)
    runtime.fit(x, y, optimizer={"class_name": "Adam", "config": {"learning_rate": 0.01}})


@pytest.mark.parametrize("spec,message", [
    ({"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [5, 3], "values": [1, 2, 3]}}, "increasing"),
    ({"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [3], "values": [1]}}, "one more value"),
    ({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1}}, "needs decay_rate, decay_steps"),
    ({"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 3, "gamma": 1}},
     "no option"),
    ({"class_name": "MySchedule", "config": {}}, "'MySchedule' is not supported"),
])
def test_bad_schedules_are_refused(spec, message):
    with pytest.raises(InputDataError, match=message):
        schedules.get(spec)


def test_legacy_time_decay_is_refused_not_ignored():
    """tf-keras legacy optimizers record decay (lr / (1 + decay * step)); it was dropped without a word."""
    from kconvert.runtime import optimizers
    with pytest.raises(InputDataError, match="decay=0.1 is not supported.*InverseTimeDecay"):
        optimizers.get({"class_name": "Adam", "config": {"learning_rate": 0.01, "decay": 0.1}})
    assert optimizers.get({"class_name": "Adam", "config": {"learning_rate": 0.01, "decay": 0.0}}).learning_rate == 0.01
