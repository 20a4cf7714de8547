"""Train the small sentiment model `make demo` ships (needs TensorFlow; the demo itself does not).

TextVectorization -> Embedding(mask_zero) -> Bidirectional(LSTM) -> Dropout -> Dense(softmax),
trained on the NusaX-Senti Indonesian train split with early stopping on the valid split.

    python -m kconvert.examples.train_demo_model --data-dir ../shared/data -o examples/models/sentiment.keras
"""
import argparse
import os

import numpy as np

from kconvert.examples.nusax import LABELS, load_split


def macro_f1(y_true, y_pred, classes=3):
    """Macro-averaged F1 over `classes` labels."""
    scores = []
    for c in range(classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def build_model(keras, train_texts, max_tokens, seq_len, embed_dim, units):
    """The demo architecture, with the vectorizer adapted on the training texts."""
    layers = keras.layers
    vectorizer = layers.TextVectorization(max_tokens=max_tokens, output_sequence_length=seq_len)
    vectorizer.adapt(train_texts)
    inputs = keras.Input(shape=(), dtype="string", name="text")
    x = vectorizer(inputs)
    x = layers.Embedding(len(vectorizer.get_vocabulary()), embed_dim, mask_zero=True)(x)
    x = layers.Bidirectional(layers.LSTM(units))(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="sentiment")(x)
    return keras.Model(inputs, outputs, name="nusax_sentiment")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("KCONVERT_DATA", "../shared/data"))
    parser.add_argument("-o", "--output", default="examples/models/sentiment.keras")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    train, valid, test = (load_split(args.data_dir, s) for s in ("train", "valid", "test"))
    model = build_model(keras, train[0], max_tokens=3000, seq_len=64, embed_dim=32, units=32)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(2e-3),
                  metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    model.fit(tf.constant(train[0]), np.array(train[1]), validation_data=(tf.constant(valid[0]), np.array(valid[1])),
              epochs=args.epochs, batch_size=32, callbacks=[stop], verbose=2)
    probs = model.predict(tf.constant(test[0]), verbose=0)
    pred = probs.argmax(axis=1)
    y = np.array(test[1])
    print(f"test accuracy {np.mean(pred == y):.4f}  macro-F1 {macro_f1(y, pred):.4f}  "
          f"predicted class counts {np.bincount(pred, minlength=3).tolist()}")
    model.save(args.output)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
