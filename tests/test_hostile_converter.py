"""Hostile and broken model files: every case builds its bad file here and must end in one ConversionError,
with nothing written outside (or at all in) the output folder."""
import io
import json
import os
import re
import zipfile

import h5py
import numpy as np
import pytest

from helpers import keras_module
from kconvert.converter import convert
from kconvert.schema import ConversionError, limits


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A small valid Dense model as .keras and .h5 bytes."""
    K = keras_module("keras3")
    tmp = tmp_path_factory.mktemp("valid")
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2, name="d")])
    model.save(tmp / "m.keras")
    model.save(tmp / "m.h5")
    return {"keras": (tmp / "m.keras").read_bytes(), "h5": (tmp / "m.h5").read_bytes()}


def refused(path, tmp_path, match, **options):
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path))
    with pytest.raises(ConversionError, match=match) as info:
        convert(str(path), str(out), **options)
    assert "\n" not in str(info.value)
    assert not out.exists() and set(os.listdir(tmp_path)) == before, "nothing may be written"
    return str(info.value)


def rewrite_keras(data, tmp_path, config=None, extra=(), raw_members=None):
    """A .keras zip from `data` with config.json replaced and extra members (name, bytes) added."""
    src = zipfile.ZipFile(io.BytesIO(data))
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "config.json" and config is not None:
                content = config if isinstance(config, bytes) else json.dumps(config).encode()
            dst.writestr(info.filename, content)
        for name, content in extra:
            dst.writestr(name, content)
    return path


def keras_config(data):
    return json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json"))


def write_h5(data, tmp_path, edit):
    path = tmp_path / "bad.h5"
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _dense_group(f):
    group = f["model_weights/d"]
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
    return group, names


# --- classes that name code -------------------------------------------------------------------
@pytest.mark.parametrize("mutation,match", [
    (dict(module="os", class_name="system"), "comes from module 'os', not Keras"),
    (dict(module="builtins", class_name="Dense"), "comes from module 'builtins', not Keras"),
    (dict(registered_name="builtins>eval"), "registered custom object 'builtins>eval'"),
    (dict(class_name="eval"), "has class 'eval', which kconvert does not support"),
    (dict(class_name="Lambda", config={"name": "d", "function": {"class_name": "__lambda__", "config": {
        "code": "4wEAAAAAAAAA", "defaults": None, "closure": None}}}), "Lambda layer"),
])
def test_layer_class_naming_code_refused(model_files, tmp_path, mutation, match):
    config = keras_config(model_files["keras"])
    config["config"]["layers"][1].update(mutation)
    refused(rewrite_keras(model_files["keras"], tmp_path, config), tmp_path, match)


# --- HDF5 links and storage -----------------------------------------------------------------------
def test_hdf5_external_storage_refused(model_files, tmp_path):
    secret = tmp_path.parent / "secret.bin"
    secret.write_bytes(np.arange(6, dtype="<f4").tobytes())

    def edit(f):
        group, names = _dense_group(f)
        del group[names[0]]
        group.create_dataset(names[0], shape=(3, 2), dtype="<f4", external=[(str(secret), 0, 24)])
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "external or virtual storage")


@pytest.mark.parametrize("link", ["soft", "external"])
def test_hdf5_links_refused(model_files, tmp_path, link):
    def edit(f):
        group, names = _dense_group(f)
        target = f"/model_weights/d/{names[1]}"
        del group[names[0]]
        group[names[0]] = h5py.SoftLink(target) if link == "soft" else h5py.ExternalLink("/etc/hosts", "/x")
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "goes through a (SoftLink|ExternalLink)")


def test_hdf5_virtual_dataset_refused(model_files, tmp_path):
    def edit(f):
        group, names = _dense_group(f)
        source = group[names[0]][()]
        f.create_dataset("/hidden", data=source)
        layout = h5py.VirtualLayout(shape=source.shape, dtype="<f4")
        layout[:] = h5py.VirtualSource(f["/hidden"])
        del group[names[0]]
        group.create_virtual_dataset(names[0], layout)
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "external or virtual storage")


@pytest.mark.parametrize("bad_name", ["../../etc/passwd", "/model_weights/d/d/kernel", "d/./kernel", "a\\b"])
def test_weight_and_layer_names_with_paths_refused(model_files, tmp_path, bad_name):
    def edit(f):
        group, names = _dense_group(f)
        group.attrs["weight_names"] = np.array([bad_name.encode()] + [n.encode() for n in names[1:]], dtype=object)
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "HDF5 path|component")

    def edit_layers(f):
        f["model_weights"].attrs["layer_names"] = np.array([bad_name.encode()], dtype=object)
    # layer_names no longer lists the config's layer 'd', so its weights are missing
    refused(write_h5(model_files["h5"], tmp_path, edit_layers), tmp_path, "has 0 weight\\(s\\) in the file")


def test_dataset_shape_larger_than_its_bytes_refused(model_files, tmp_path):
    def edit(f):
        group, names = _dense_group(f)
        del group[names[0]]
        group.create_dataset(names[0], shape=(3, 2), dtype="<f4")  # declared, never written: 0 bytes stored
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "stores only 0 bytes")


def test_absurd_dataset_shape_refused(model_files, tmp_path):
    def edit(f):
        group, names = _dense_group(f)
        del group[names[0]]
        group.create_dataset(names[0], shape=(10 ** 6, 10 ** 6), dtype="<f4", chunks=(1, 1))
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "more than the .* allowed per weight")


@pytest.mark.parametrize("edit,match", [
    (lambda g, n: g.attrs.__setitem__("weight_names", np.array([n[0].encode()], dtype=object)),
     "has 1 weight\\(s\\) in the file, expected 2"),
    (lambda g, n: (g.create_dataset("extra", data=np.zeros(2, "<f4")),
                   g.attrs.__setitem__("weight_names", np.array([x.encode() for x in n] + [b"extra"], dtype=object))),
     "has 3 weight\\(s\\) in the file, expected 2"),
    (lambda g, n: (g.__delitem__(n[1]), g.create_dataset(n[1], data=np.zeros(5, "<f4"))),
     "weight bias has shape \\(5,\\) in the file, expected \\(2,\\)"),
    (lambda g, n: (g.__delitem__(n[1]), g.create_dataset(n[1], data=np.array([b"ab", b"cd"]))),
     "expected floating point weights"),
])
def test_missing_extra_or_wrong_weights_refused(model_files, tmp_path, edit, match):
    refused(write_h5(model_files["h5"], tmp_path, lambda f: edit(*_dense_group(f))), tmp_path, match)


# --- .keras zip members ---------------------------------------------------------------------------
@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "assets\\..\\evil.txt", "assets/../../x"])
def test_unsafe_zip_member_names_refused(model_files, tmp_path, member):
    refused(rewrite_keras(model_files["keras"], tmp_path, extra=[(member, b"x")]), tmp_path, "unsafe member name")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_duplicate_zip_members_refused(model_files, tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        path = rewrite_keras(model_files["keras"], tmp_path, extra=[("config.json", b"{}")])
    refused(path, tmp_path, "has the member 'config.json' twice")


def test_zip_bomb_member_refused(model_files, tmp_path):
    bomb = b"\0" * (64 * 1024 * 1024)  # compresses about 1000:1
    path = tmp_path / "bomb.keras"
    src = zipfile.ZipFile(io.BytesIO(model_files["keras"]))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr("assets/bomb.bin", bomb)
    del bomb
    refused(path, tmp_path, "zip bomb")


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_truncated_and_empty_files_refused(model_files, tmp_path, kind):
    data = model_files[kind]
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[:len(data) // 2])
    refused(path, tmp_path, "not a readable|not the size|no config|has no|cannot be read")
    path.write_bytes(b"")
    refused(path, tmp_path, "is empty")


# --- configs ----------------------------------------------------------------------------------------
def test_huge_config_refused(model_files, tmp_path):
    config = keras_config(model_files["keras"])
    config["padding"] = "x" * (limits.MAX_CONFIG_JSON_BYTES + 1)
    refused(rewrite_keras(model_files["keras"], tmp_path, config), tmp_path, "more than the .* allowed")


@pytest.mark.parametrize("depth", [limits.MAX_JSON_DEPTH + 5, 100_000])
def test_deeply_nested_config_refused(model_files, tmp_path, depth):
    text = b'{"class_name": "Sequential", "config": ' + b"[" * depth + b"]" * depth + b"}"
    refused(rewrite_keras(model_files["keras"], tmp_path, text), tmp_path, "nested more than")


@pytest.mark.parametrize("text,match", [
    (b'{"class_name": "Sequential", "class_name": "Functional", "config": {}}', "the key 'class_name' twice"),
    (b'{"class_name": "Sequential", "config": {"layers": [NaN]}}', "NaN"),
    (b'{"class_name": "Sequential", "config": {"layers": [Infinity]}}', "Infinity"),
    (b"\xff\xfe not utf-8", "utf-8|UTF-8|codec"),
])
def test_malformed_config_json_refused(model_files, tmp_path, text, match):
    with pytest.raises(ConversionError, match=match):
        convert(str(rewrite_keras(model_files["keras"], tmp_path, text)), str(tmp_path / "out"))


@pytest.mark.parametrize("shape,match", [
    ([None, -5], "invalid dimension -5"), ([None, 0], "invalid dimension 0"), ([None, 2 ** 40], "invalid dimension"),
    ([None] + [2] * 12, "1 to 8 dimensions"), ("3", "expected a list"),
])
def test_absurd_input_shapes_refused(model_files, tmp_path, shape, match):
    config = keras_config(model_files["keras"])
    config["config"]["layers"][0]["config"]["batch_shape"] = shape
    refused(rewrite_keras(model_files["keras"], tmp_path, config), tmp_path, match)


def test_absurd_layer_option_refused(model_files, tmp_path):
    config = keras_config(model_files["keras"])
    config["config"]["layers"][1]["config"]["units"] = -3
    refused(rewrite_keras(model_files["keras"], tmp_path, config), tmp_path, "units|shape")


@pytest.mark.parametrize("name", ["../../evil", "/etc/passwd", "a\\b\\c", "con", "x" * 600, "..", "köln ☃"])
def test_dangerous_layer_names_stay_inside_the_output(model_files, tmp_path, name):
    config = keras_config(model_files["keras"])
    config["config"]["layers"][1]["config"]["name"] = name
    path = rewrite_keras(model_files["keras"], tmp_path, config)
    out = tmp_path / "out"
    graph = convert(str(path), str(out))
    written = [os.path.join(root, f) for root, _, files in os.walk(out) for f in files]
    assert all(os.path.realpath(f).startswith(str(out.resolve()) + os.sep) for f in written)
    assert sorted(os.path.relpath(f, out) for f in written) == ["graph.json", "weights/000_dense_bias.npy",
                                                               "weights/000_dense_kernel.npy"]
    node = json.loads(open(graph).read())["nodes"][0]
    # Node names never become file names; they only have to fit the schema's name pattern.
    assert node["source"]["layer"] == name and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,255}", node["name"])
    assert sorted(set(os.listdir(tmp_path))) == ["bad.keras", "out"]


def test_invalid_unicode_in_hdf5_text_refused(model_files, tmp_path):
    """Found by fuzzing: a corrupted string attribute decoded to a lone surrogate and broke the writer."""
    def edit(f):
        f.attrs["keras_version"] = np.bytes_(b"3.\xff\xfe")
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "not valid UTF-8")


@pytest.mark.parametrize("version", ["3\x0115", "2.15.0 ; x", "3.."])
def test_damaged_keras_version_refused(model_files, tmp_path, version):
    """Found by fuzzing (600 examples): a flipped byte made '3.1.5' '3\\x0115', and int() raised ValueError."""
    def edit(f):
        f.attrs["keras_version"] = version
    refused(write_h5(model_files["h5"], tmp_path, edit), tmp_path, "is not a version number; the file is damaged")


def test_invalid_unicode_in_vocabulary_refused(tmp_path):
    from kconvert.schema.folder import write_graph
    from kconvert.schema import GraphError
    with pytest.raises(GraphError, match="not valid Unicode"):
        write_graph({"nodes": []}, {}, {"assets/000_x_vocabulary.json": ["ok", "\udc80"]}, tmp_path / "out")
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []


def test_non_utf8_vocabulary_asset_refused(tmp_path):
    K = keras_module("keras3")
    layer = K.layers.TextVectorization(output_sequence_length=2)
    layer.adapt(["a b"])
    inputs = K.Input((), dtype="string")
    K.Model(inputs, layer(inputs)).save(tmp_path / "t.keras")
    src = zipfile.ZipFile(tmp_path / "t.keras")
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, b"\xff\xfe\n" + data if info.filename.endswith("vocabulary.txt") else data)
    os.remove(tmp_path / "t.keras")
    refused(tmp_path / "bad.keras", tmp_path, "vocabulary.txt is not UTF-8 text")
