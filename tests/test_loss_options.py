"""Options of the compiled loss that change training: label_smoothing is followed, the rest refused by name."""
import numpy as np
import pytest

from helpers import keras_module, randomize_weights, save_and_convert
from kconvert.schema import InputDataError

# (loss class, its options, final activation, targets, epochs, batch size). Without logits Keras normalises
# and clips probabilities to [1e-7, 1 - 1e-7], and their gradient is -t / p: a relu output that is a float32
# cancellation away from 0 carries a relative rounding difference of ~3e-5 from weights an ulp apart, which
# the 1 / p gradient turns into weight differences of 3e-5 after two steps and 2e-4 after four (at lr 0.02,
# through an output of 5.8e-4; at lr 0.1 twelve steps ended 1.1x the tolerance apart on one machine and within
# it on another). That measures summation order, not semantics, so the clipped relu case takes one SGD step
# over all 16 training rows from identical weights, where only the forward pass's own rounding enters
# (0.23 of the tolerance), and the categorical cases, whose normalisation divides by such outputs too, use
# softplus instead.
CASES = [("CategoricalCrossentropy", {"label_smoothing": 0.1}, "softmax", "one_hot", 3, 4),
         ("CategoricalCrossentropy", {"label_smoothing": 0.3, "from_logits": True}, "linear", "one_hot", 3, 4),
         ("CategoricalCrossentropy", {"label_smoothing": 0.2}, "softplus", "one_hot", 3, 4),
         ("BinaryCrossentropy", {"label_smoothing": 0.2}, "sigmoid", "multi_hot", 3, 4),
         ("BinaryCrossentropy", {"label_smoothing": 0.15, "from_logits": True}, "linear", "multi_hot", 3, 4),
         ("BinaryCrossentropy", {"label_smoothing": 0.25}, "relu", "multi_hot", 1, 16)]


@pytest.mark.parametrize("cls,config,final,targets,epochs,batch_size", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fit_follows_the_recorded_label_smoothing(cls, config, final, targets, epochs, batch_size, tmp_path):
    K = keras_module("keras3")
    rng = np.random.default_rng(91)
    model = K.Sequential([K.Input((5,)), K.layers.Dense(6, activation="tanh"), K.layers.Dense(3, activation=final)])
    randomize_weights(model, seed=92, scale=0.4)
    model.compile(optimizer=K.optimizers.SGD(0.1), loss=getattr(K.losses, cls)(**config), metrics=["accuracy"])
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = rng.normal(size=(20, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 20)
    y = np.eye(3, dtype=np.float32)[labels] if targets == "one_hot" else rng.integers(0, 2, (20, 3)).astype(np.float32)
    settings = dict(epochs=epochs, batch_size=batch_size, shuffle=False, validation_split=0.2)
    expected = model.fit(x, y, verbose=0, **settings).history
    history = runtime.fit(x, y, **settings).history
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-4, err_msg=key)
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6, err_msg=str(key))


@pytest.mark.parametrize("loss,message", [
    (lambda K: K.losses.SparseCategoricalCrossentropy(ignore_class=0), "ignore_class=0"),
    (lambda K: K.losses.MeanSquaredError(reduction="sum"), "reduction='sum'"),
    (lambda K: K.losses.CategoricalCrossentropy(axis=0), "axis=0"),
])
def test_unsupported_loss_options_are_refused_by_name(loss, message, tmp_path):
    """Before, fit trained these with the default behaviour and said nothing."""
    K = keras_module("keras3")
    model = K.Sequential([K.Input((5,)), K.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss=loss(K))
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.ones((4, 5), np.float32)
    y = np.zeros(4, int) if "ignore" in message else np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    with pytest.raises(InputDataError, match=f"{message}, which fit does not support"):
        runtime.fit(x, y)
    runtime.fit(x, y, loss="sparse_categorical_crossentropy" if "ignore" in message else "categorical_crossentropy")
