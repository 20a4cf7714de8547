"""Keras models for experiment variants (imports Keras: used by the experiment runner only)."""

NUSAX_CLASSES = 3
CIFAR_CLASSES = 10


def build_text_model(keras, config, train_texts):
    """TextVectorization -> Embedding(mask_zero) -> stacked (Bi)RNN/LSTM/GRU -> Dropout -> Dense(softmax)."""
    layers = keras.layers
    vectorizer = layers.TextVectorization(max_tokens=config["max_tokens"],
                                          output_sequence_length=config["sequence_length"])
    vectorizer.adapt(train_texts)
    inputs = keras.Input(shape=(), dtype="string", name="text")
    x = layers.Embedding(len(vectorizer.get_vocabulary()), config["embedding_dim"], mask_zero=True)(vectorizer(inputs))
    cell = {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}[config["cell"]]
    for i in range(config["layers"]):
        rnn = cell(config["units"], return_sequences=i < config["layers"] - 1)
        x = layers.Bidirectional(rnn)(x) if config["bidirectional"] else rnn(x)
    x = layers.Dropout(config["dropout"])(x)
    outputs = layers.Dense(NUSAX_CLASSES, activation="softmax", name="sentiment")(x)
    return keras.Model(inputs, outputs)


def build_cnn(keras, config):
    """Rescaling -> [Conv2D(same, relu) -> Pool(2)] x n -> Flatten -> Dense(relu) -> Dropout -> Dense(softmax);
    with batch_norm, each conv is Conv2D(same, no bias) -> BatchNormalization -> ReLU."""
    layers = keras.layers
    pool = layers.MaxPooling2D if config["pooling"] == "max" else layers.AveragePooling2D
    model = keras.Sequential([keras.Input((32, 32, 3)), layers.Rescaling(1 / 255.0)])
    for i in range(config["conv_layers"]):
        filters = config["filters"][min(i, len(config["filters"]) - 1)]
        if config.get("batch_norm", False):
            model.add(layers.Conv2D(filters, config["kernel_size"], padding="same", use_bias=False))
            model.add(layers.BatchNormalization())
            model.add(layers.ReLU())
        else:
            model.add(layers.Conv2D(filters, config["kernel_size"], padding="same", activation="relu"))
        model.add(pool(2))
    model.add(layers.Flatten())
    model.add(layers.Dense(config["dense_units"], activation="relu"))
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(CIFAR_CLASSES, activation="softmax"))
    return model


def optimizer(keras, training):
    """The Keras optimizer a spec's training section names."""
    classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop,
               "adamw": keras.optimizers.AdamW}
    return classes[training["optimizer"]](**optimizer_config(training))


def optimizer_config(training):
    """Keyword arguments of the optimizer a spec's training section names (shared by Keras and the runtime)."""
    return {"learning_rate": training["learning_rate"],
            **({"clipnorm": training["clipnorm"]} if "clipnorm" in training else {})}
