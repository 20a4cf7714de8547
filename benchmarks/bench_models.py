"""The benchmark models (built with Keras, randomised weights) and their inputs."""
import numpy as np

SEQUENCE_LENGTH = 64
VOCABULARY = 3000
TEXT_CLASSES = 3
CNN_CLASSES = 10


def build(keras, name):
    """A compiled Keras model: 'cnn' (6 conv), 'cnn_bn' (the same with BatchNormalization after each conv),
    'bilstm', 'rnn2' or 'bigru'."""
    layers = keras.layers
    if name in ("cnn", "cnn_bn"):
        model = keras.Sequential([keras.Input((32, 32, 3), name="image")])
        for filters in (32, 64, 128):  # 32-32-64-64-128-128, 3x3 same, a max-pool after each pair
            for _ in range(2):
                if name == "cnn":
                    model.add(layers.Conv2D(filters, 3, padding="same", activation="relu"))
                else:  # the usual block: no conv bias (the normalization's beta replaces it), BN, then relu
                    model.add(layers.Conv2D(filters, 3, padding="same", use_bias=False))
                    model.add(layers.BatchNormalization())
                    model.add(layers.ReLU())
            model.add(layers.MaxPooling2D(2))
        model.add(layers.Flatten())
        model.add(layers.Dense(128, activation="relu"))
        model.add(layers.Dense(CNN_CLASSES, activation="softmax"))
    else:
        inputs = keras.Input((SEQUENCE_LENGTH,), dtype="int32", name="tokens")
        x = layers.Embedding(VOCABULARY, 128, mask_zero=True)(inputs)
        if name == "bilstm":
            x = layers.Bidirectional(layers.LSTM(64))(x)
        elif name == "bigru":
            x = layers.Bidirectional(layers.GRU(64))(x)
        elif name == "rnn2":
            x = layers.SimpleRNN(64, return_sequences=True)(x)
            x = layers.SimpleRNN(64)(x)
        else:
            raise ValueError(f"unknown benchmark model {name!r}")
        model = keras.Model(inputs, layers.Dense(TEXT_CLASSES, activation="softmax")(x))
    _randomise(model, np.random.default_rng(0))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _randomise(model, rng):
    """Non-zero biases too, so no backend can shortcut them; scaled to keep activations in range (a
    BatchNormalization's gamma near 1 and moving variance positive)."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.normal(1, 0.1, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean),
                               rng.uniform(0.5, 1.5, variance)])
            continue
        values = []
        for w in layer.get_weights():
            fan_in = w.shape[0] if w.ndim == 2 else int(np.prod(w.shape[:-1])) if w.ndim > 2 else 10
            values.append(rng.normal(0, 1 / np.sqrt(fan_in), w.shape).astype("float32"))
        if values:
            layer.set_weights(values)


def inputs(name, count, seed=0):
    """`count` inputs and integer labels for model `name` (text: padded token ids, lengths 5..64)."""
    rng = np.random.default_rng(seed)
    if name.startswith("cnn"):
        x = rng.random((count, 32, 32, 3), dtype=np.float32)
        return x, rng.integers(0, CNN_CLASSES, count)
    lengths = rng.integers(5, SEQUENCE_LENGTH + 1, count)
    tokens = rng.integers(1, VOCABULARY, (count, SEQUENCE_LENGTH)).astype(np.int32)
    tokens[np.arange(SEQUENCE_LENGTH)[None, :] >= lengths[:, None]] = 0  # post-padding, as TextVectorization
    return tokens, rng.integers(0, TEXT_CLASSES, count)


def flops_per_sample(model):
    """2 x multiply-adds of one inference sample through the Conv2D and Dense layers of a Keras model, counted as
    a direct convolution computes them: for a backend that needs fewer (kconvert's Winograd 3x3 convs do 2.25x
    fewer), the GFLOP/s derived from it is an effective rate, as vendors quote for such kernels."""
    flops = 0
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            kh, kw, cin, filters = layer.kernel.shape
            _, ho, wo, _ = layer.output.shape
            flops += 2 * ho * wo * kh * kw * cin * filters
        elif type(layer).__name__ == "Dense":
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return flops
