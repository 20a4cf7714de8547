"""Shared test helpers: Keras model builders' plumbing, conversion round trips, parity assertions."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from kconvert.converter import convert  # noqa: E402
from kconvert.runtime import load  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6  # DESIGN.md: float32 inference tolerance
FORMATS = [("keras3", ".keras"), ("keras3", ".h5"), ("tf_keras", ".h5"), ("tf_keras", ".keras")]
# tf-keras cannot write an adapted TextVectorization to .h5 (it raises NotImplementedError), so text
# models exist in tf-keras only as .keras files.
TEXT_FORMATS = [f for f in FORMATS if f != ("tf_keras", ".h5")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("KCONVERT_DATA", os.path.join(ROOT, "..", "shared", "data"))
DEMO_SPEC = os.path.join(ROOT, "examples", "demo", "sentiment.toml")  # the spec the demo model is trained from


def keras_module(flavour):
    """The Keras 3 package or tf-keras (Keras 2), by name."""
    if flavour == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def randomize_weights(model, seed=0, scale=0.5):
    """Replace every weight (biases included) by N(0, scale) values: zero biases hide layout bugs. A
    BatchNormalization's moving variance, which must be positive, gets |N(0, scale)| + 0.2."""
    rng = np.random.default_rng(seed)
    weights = [np.asarray(w) for w in model.get_weights()]
    # Keras 3 variables have a path, tf-keras ones a name (its TextVectorization's vocabulary handler neither)
    names = [getattr(v, "path", None) or getattr(v, "name", "") for v in model.weights]
    # tf-keras lists a TextVectorization vocabulary among the weights; leave non-float ones alone.
    new = [rng.normal(0, scale, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w for w in weights]
    model.set_weights([np.abs(w) + w.dtype.type(0.2) if "moving_variance" in name else w
                       for name, w in zip(names, new)])


def keras_predict(model, x):
    """The Keras model's own output for x: `model(x, training=False)`, Keras's inference call (no graph
    tracing, which would dominate the suite's time); strings are passed as a tf.string tensor."""
    import tensorflow as tf
    if isinstance(x, list):
        x = tf.constant(x)
        if len(model.inputs[0].shape) == 2:  # tf-keras string inputs are (batch, 1)
            x = tf.reshape(x, (-1, 1))
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def save_and_convert(model, tmp_path, ext, vocabulary=None, **options):
    """Save `model` as model<ext>, convert it, and return (runtime Model, graph.json path)."""
    path = os.path.join(tmp_path, f"model{ext}")
    model.save(path)
    vocab_file = None
    if vocabulary is not None:
        vocab_file = os.path.join(tmp_path, "vocabulary.txt")
        with open(vocab_file, "w", encoding="utf-8") as fh:
            fh.write("\n".join(vocabulary))
    graph = convert(path, os.path.join(tmp_path, f"graph{ext.replace('.', '_')}"), vocabulary=vocab_file, **options)
    return load(graph), graph


def assert_parity(actual, expected, rtol=RTOL, atol=ATOL):
    """Shape first, then dtype, then values."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != Keras {expected.shape}"
    assert actual.dtype == np.float32, f"dtype {actual.dtype}, expected float32"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def padded_ids(rng, batch, steps, vocab, where="post", full_rows=True):
    """Token ids with padding (0) at the end or the start, one fully padded and one unpadded row;
    where="scattered" puts zeros anywhere (no padding pattern: the runtime's general masked path)."""
    ids = rng.integers(1, vocab, size=(batch, steps))
    if where == "scattered":
        ids[rng.random((batch, steps)) < 0.35] = 0
        ids[0, 1:3] = 0  # a gap inside a row
        return ids.astype(np.int32)
    lengths = rng.integers(1, steps + 1, size=batch)
    if full_rows:
        lengths[0], lengths[-1] = steps, 0
    for row, n in enumerate(lengths):  # test data set-up, not runtime code
        if where == "post":
            ids[row, n:] = 0
        else:
            ids[row, :steps - n] = 0
    return ids.astype(np.int32)


def targets_for(loss, rng, shape, classes=3):
    """Random targets of `shape` (rows, or rows and steps) for a loss on a `classes`-wide output."""
    labels = rng.integers(0, classes, shape)
    if loss == "sparse_categorical_crossentropy":
        return labels
    if loss == "categorical_crossentropy":
        return np.eye(classes, dtype=np.float32)[labels]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (*shape, classes)).astype(np.float32)
    return rng.normal(size=(*shape, classes)).astype(np.float32)


def record_block_calls(monkeypatch, module, name):
    """Patch the block generator module.name so that each call appends its input's shape to the returned list
    (and yields what the real one yields)."""
    calls = []
    real = getattr(module, name)

    def counted(x, *args, **kwargs):
        calls.append(x.shape)
        yield from real(x, *args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls
