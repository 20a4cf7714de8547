"""The bundled demo model (examples/models/sentiment.keras) against Keras on the NusaX-Senti test split."""
import os

import numpy as np
import pytest

from helpers import ATOL, DATA_DIR, ROOT, RTOL, keras_predict
from kconvert.converter import convert
from kconvert.runtime import load

from kconvert.examples.nusax import load_split
from kconvert.examples.train_demo_model import macro_f1

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")


def test_demo_model_matches_keras_on_the_test_split(tmp_path):
    import keras
    texts, labels = load_split(DATA_DIR, "test")
    assert len(texts) == 400
    expected = keras_predict(keras.saving.load_model(DEMO_MODEL), texts)
    model = load(convert(DEMO_MODEL, str(tmp_path / "g"), labels=["negative", "neutral", "positive"]))
    actual = model.predict(texts, batch_size=64)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    assert np.array_equal(actual.argmax(1), expected.argmax(1))
    f1 = macro_f1(np.array(labels), actual.argmax(1))
    assert f1 >= 0.70, f"demo model macro-F1 {f1:.4f} fell below 0.70"
    assert len(set(actual.argmax(1))) == 3, "the demo model must not collapse to fewer classes"


def test_nusax_loader_reads_every_language():
    languages = sorted(os.listdir(os.path.join(DATA_DIR, "nusax-sentiment")))
    assert len(languages) == 12
    for language in languages:
        texts, labels = load_split(DATA_DIR, "valid", language)
        assert len(texts) == 100 and set(labels) <= {0, 1, 2}


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --data-dir"):
        load_split(str(tmp_path), "train")
