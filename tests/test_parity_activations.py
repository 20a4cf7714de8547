"""Every activation Keras accepts by name, against Keras 3 and tf-keras; erf against math.erf."""
import math

import numpy as np
import pytest

from helpers import assert_parity, keras_module, keras_predict, randomize_weights, save_and_convert
from kconvert.runtime.ops.activations import erf

# keras.activations names that take no required argument ('threshold' needs two, so Keras cannot use it by name).
KERAS3_NAMES = ["celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
                "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu", "relu6", "selu",
                "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus", "sparse_sigmoid",
                "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink", None]
# Names tf-keras resolves (its own activations plus the tf.nn functions it falls back to).
TF_KERAS_NAMES = ["elu", "exponential", "gelu", "hard_sigmoid", "linear", "mish", "relu", "selu", "sigmoid",
                  "softmax", "softplus", "softsign", "swish", "tanh", "relu6", "leaky_relu", "silu", "log_softmax"]
CASES = [("keras3", ext, n) for n in KERAS3_NAMES for ext in (".keras", ".h5")] + \
        [("tf_keras", ".h5", n) for n in TF_KERAS_NAMES]


@pytest.mark.parametrize("flavour,ext,name", CASES, ids=[f"{f}{e}-{n}" for f, e, n in CASES])
def test_activation_parity(flavour, ext, name, tmp_path):
    K = keras_module(flavour)
    model = K.Sequential([K.Input((5,)), K.layers.Dense(8, activation=name)])
    randomize_weights(model, seed=4, scale=0.8)
    x = np.random.default_rng(5).normal(0, 1.5, (64, 5)).astype(np.float32)
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ext)
    assert_parity(runtime.predict(x), expected)


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-10, 10, 20001), [0.0, 1e-8, -1e-8, 0.999999, 1.0, 1.000001, 7.99, 8.0, 8.01]])
    expected = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(x), expected, rtol=1e-14, atol=1e-15)
