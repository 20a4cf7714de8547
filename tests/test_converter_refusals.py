"""Unsupported models are refused with one message naming the layer, class and option; nothing is written."""
import os

import numpy as np
import pytest

from helpers import keras_module
from kconvert.converter import convert
from kconvert.schema import ConversionError


def _convert_refused(model_or_path, tmp_path, ext=".keras", match=None, **options):
    if isinstance(model_or_path, str):
        path = model_or_path
    else:
        path = str(tmp_path / f"model{ext}")
        model_or_path.save(path)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=match) as info:
        convert(path, str(out), **options)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists(), "a refused conversion must not leave an output folder"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.")], "temporary folder left behind"
    return message


@pytest.fixture
def K():
    return keras_module("keras3")


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_lambda_refused(K, tmp_path, ext):
    model = K.Sequential([K.Input((3,)), K.layers.Lambda(lambda x: x * 2, name="doubler")])
    message = _convert_refused(model, tmp_path, ext, match="Lambda")
    assert "'doubler'" in message and "never" in message


def test_unsupported_layer_named(K, tmp_path):
    model = K.Sequential([K.Input((4, 4, 4, 3)), K.layers.Conv3D(2, 2, name="my_conv3d")])
    message = _convert_refused(model, tmp_path, match="'my_conv3d' has class 'Conv3D'")
    assert "supported:" in message and "LSTM" in message


def test_custom_class_refused(K, tmp_path):
    @K.saving.register_keras_serializable(package="test")
    class Twice(K.layers.Layer):
        def call(self, x):
            return x * 2

    model = K.Sequential([K.Input((3,)), Twice(name="twice")])
    _convert_refused(model, tmp_path, match="layer 'twice' \\(Twice\\) comes from module 'test_converter_refusals', "
                                           "not Keras; custom classes are not supported")


@pytest.mark.parametrize("option,layer_kwargs,shape", [
    ("stateful", dict(stateful=True), dict(batch_shape=(2, 5, 3))),
    ("unroll", dict(unroll=True), dict(shape=(5, 3))),
])
def test_recurrent_options_refused(K, tmp_path, option, layer_kwargs, shape):
    model = K.Sequential([K.Input(**shape), K.layers.LSTM(2, name="rec", **layer_kwargs)])
    message = _convert_refused(model, tmp_path, match=f"layer 'rec' \\(LSTM\\): {option}=True is not supported")
    assert option in message


def test_bidirectional_merge_none_refused(K, tmp_path):
    inputs = K.Input((5, 3))
    fwd, bwd = K.layers.Bidirectional(K.layers.LSTM(2), merge_mode=None, name="bi")(inputs)
    model = K.Model(inputs, [fwd, bwd])
    _convert_refused(model, tmp_path, match="'bi' \\(Bidirectional\\): merge_mode=None")


def test_channels_first_refused(K, tmp_path):
    model = K.Sequential([K.Input((3, 8, 8)), K.layers.Conv2D(2, 3, data_format="channels_first", name="c")])
    _convert_refused(model, tmp_path, match="'c' \\(Conv2D\\): data_format='channels_first'")


def test_mixed_precision_refused(K, tmp_path):
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2, dtype="mixed_float16", name="d")])
    _convert_refused(model, tmp_path, match="'d' \\(Dense\\): dtype='mixed_float16'")


def test_h5_text_vectorization_needs_vocabulary(K, tmp_path):
    layer = K.layers.TextVectorization(output_sequence_length=3, name="tv")
    layer.adapt(["a b c"])
    inputs = K.Input((), dtype="string")
    model = K.Model(inputs, layer(inputs))
    message = _convert_refused(model, tmp_path, ".h5", match="does not store the vocabulary")
    assert "--vocabulary" in message and "'tv'" in message


def test_wrong_vocabulary_size_refused(K, tmp_path):
    layer = K.layers.TextVectorization(output_sequence_length=3, name="tv")
    layer.adapt(["a b c"])
    inputs = K.Input((), dtype="string")
    model = K.Model(inputs, layer(inputs))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n[UNK]\na\nb\n", encoding="utf-8")
    _convert_refused(model, tmp_path, ".h5", match="saved with 5", vocabulary=str(vocab))


def test_nested_model_refused(K, tmp_path):
    inner = K.Sequential([K.Input((3,)), K.layers.Dense(2)], name="inner")
    inputs = K.Input((3,))
    model = K.Model(inputs, inner(inputs))
    _convert_refused(model, tmp_path, match="nested Sequential")


def test_weights_only_h5_refused(K, tmp_path):
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2)])
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    _convert_refused(path, tmp_path, match="weights only")


@pytest.mark.parametrize("content,match", [(b"", "is empty"), (b"hello, not a model", "neither"),
                                           (b"PK\x03\x04broken", "not a readable .keras zip")])
def test_not_a_model_refused(tmp_path, content, match):
    path = tmp_path / "bad.keras"
    path.write_bytes(content)
    _convert_refused(str(path), tmp_path, match=match)


def test_missing_file_refused(tmp_path):
    _convert_refused(str(tmp_path / "absent.keras"), tmp_path, match="does not exist")


def test_labels_must_match_output(K, tmp_path):
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2)])
    _convert_refused(model, tmp_path, match="--labels has 3 names but the output has 2", labels=["a", "b", "c"])


def test_existing_output_needs_force(K, tmp_path):
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="already exists"):
        convert(path, str(out))
    assert (out / "keep.txt").read_text() == "user data"
    convert(path, str(out), force=True)
    assert (out / "graph.json").is_file() and not (out / "keep.txt").exists()
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_mismatched_weights_refused(K, tmp_path):
    """A file whose weights do not fit its config (edited by hand or by an attacker) is refused."""
    import h5py
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2, name="d")])
    path = str(tmp_path / "m.h5")
    model.save(path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/d"]
        name = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[name]
        group.create_dataset(name, data=np.zeros((4, 2), np.float32))
    _convert_refused(path, tmp_path, match="weight kernel has shape \\(4, 2\\) in the file, expected \\(3, 2\\)")


@pytest.mark.parametrize("flavour,kwargs,match", [
    ("keras3", dict(renorm=True), "renorm=True is not supported; Batch Renormalization"),
    ("tf_keras", dict(axis=[1, 2]), r"axis=\[1, 2\] is not supported; normalization over one features axis"),
    ("tf_keras", dict(virtual_batch_size=2), "virtual_batch_size=2 is not supported; ghost batches"),
], ids=["renorm", "two_axes", "virtual_batch"])
def test_batchnorm_options_refused(flavour, kwargs, match, tmp_path):
    K = keras_module(flavour)
    model = K.Sequential([K.Input((4, 3, 2)), K.layers.BatchNormalization(name="norm", **kwargs)])
    message = _convert_refused(model, tmp_path, ".h5" if flavour == "tf_keras" else ".keras", match=match)
    assert message.startswith("layer 'norm' (BatchNormalization)")


def test_layernorm_rms_scaling_refused(K, tmp_path):
    model = K.Sequential([K.Input((4,)), K.layers.LayerNormalization(rms_scaling=True, name="rms")])
    _convert_refused(model, tmp_path, match="layer 'rms' \\(LayerNormalization\\): rms_scaling=True is not supported")


def test_masked_merge_refused(K, tmp_path):
    """Keras 3 ORs the inputs' masks and computes a masked Multiply, Maximum or Minimum otherwise: refused."""
    ids = K.Input((5,), dtype="int32")
    embedded = K.layers.Embedding(9, 4, mask_zero=True)(ids)
    model = K.Model(ids, K.layers.Add(name="joined")([embedded, K.layers.Dense(4)(embedded)]))
    _convert_refused(model, tmp_path, match="layer 'joined' \\(Add\\) receives a sequence mask; a masked Add is not")


def test_bilinear_up_sampling_refused(K, tmp_path):
    model = K.Sequential([K.Input((4, 4, 2)), K.layers.UpSampling2D(interpolation="bilinear", name="up")])
    _convert_refused(model, tmp_path, match="layer 'up' \\(UpSampling2D\\): interpolation='bilinear' is not supported")
