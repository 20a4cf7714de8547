"""kconvert and krun through click's CliRunner: help, exit codes, one-line errors, every input/output form,
and parity with Keras through both CLIs."""
import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import ATOL, ROOT, RTOL, keras_module, keras_predict, randomize_weights
from kconvert.converter.cli import main as kconvert_main
from kconvert.runtime.cli import main as krun_main

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")
TEXTS = ["Makanannya enak sekali, pelayanannya ramah.", "Saya kecewa, pesanan datang terlambat dan dingin.",
         "Besok saya pergi ke Bandung."]


def run(cli, *args):
    runner = CliRunner()
    result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A small CNN saved as .h5 and its Keras predictions on a fixed batch of 8x8 RGB images."""
    K = keras_module("keras3")
    tmp = tmp_path_factory.mktemp("cnn")
    model = K.Sequential([K.Input((8, 8, 3)), K.layers.Rescaling(1 / 255.0),
                          K.layers.Conv2D(4, 3, padding="same", activation="relu"), K.layers.MaxPooling2D(),
                          K.layers.Flatten(), K.layers.Dense(3, activation="softmax")])
    randomize_weights(model, seed=11)
    images = np.random.default_rng(12).integers(0, 256, (5, 8, 8, 3)).astype(np.float32)
    path = tmp / "cnn.h5"
    model.save(path)
    return {"model": str(path), "x": images, "expected": keras_predict(model, images), "tmp": tmp}


@pytest.fixture(scope="module")
def cnn_graph(cnn):
    out = cnn["tmp"] / "graph"
    result = run(kconvert_main, cnn["model"], "-o", out, "--labels", "cat,dog,bird")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def text_graph(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "sentiment"
    result = run(kconvert_main, DEMO_MODEL, "-o", out, "--labels", "negative,neutral,positive", "-q")
    assert result.exit_code == 0, result.output
    return out


def test_help_texts():
    for cli, words in ((kconvert_main, ["--vocabulary", "--labels", "--force", "Example"]),
                       (krun_main, ["--text", "--batch-size", ".npz", "Examples"])):
        result = run(cli, "--help")
        assert result.exit_code == 0
        assert all(w in result.output for w in words)


def test_kconvert_without_options_writes_next_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(kconvert_main, DEMO_MODEL)
    assert result.exit_code == 0, result.output
    assert "Wrote sentiment.kgraph" in result.output and "Total params" in result.output
    assert "bidirectional(lstm)" in result.output
    assert (tmp_path / "sentiment.kgraph" / "graph.json").is_file()
    again = run(kconvert_main, DEMO_MODEL)
    assert again.exit_code == 1 and "already exists; pass --force" in again.output


def test_kconvert_errors_are_one_line(tmp_path):
    result = run(kconvert_main, tmp_path / "missing.h5", "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.startswith("Error: model file") and result.output.count("\n") == 1
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_krun_npy_parity_and_table(cnn, cnn_graph, tmp_path):
    np.save(tmp_path / "x.npy", cnn["x"])
    out = tmp_path / "pred.npy"
    assert run(krun_main, cnn_graph, tmp_path / "x.npy", "-o", out).exit_code == 0
    actual = np.load(out)
    assert actual.shape == cnn["expected"].shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, cnn["expected"], rtol=RTOL, atol=ATOL)
    table = run(krun_main, cnn_graph, tmp_path / "x.npy", "--batch-size", 2)
    assert table.exit_code == 0
    labels = ["cat", "dog", "bird"]
    for row, probs in enumerate(cnn["expected"]):
        assert f"{labels[int(np.argmax(probs))]}" in table.output.splitlines()[row + 1]


def test_krun_npz_json_csv(cnn, cnn_graph, tmp_path):
    np.savez(tmp_path / "x.npz", input_layer=cnn["x"])
    assert run(krun_main, cnn_graph, tmp_path / "x.npz", "-o", tmp_path / "p.json").exit_code == 0
    records = json.loads((tmp_path / "p.json").read_text())
    out_name = next(k for k in records[0] if k not in ("row", "input"))
    np.testing.assert_allclose([r[out_name]["output"] for r in records], cnn["expected"], rtol=RTOL, atol=ATOL)
    assert records[0][out_name]["class"] in ("cat", "dog", "bird")
    assert run(krun_main, cnn_graph, tmp_path / "x.npz", "-o", tmp_path / "p.csv").exit_code == 0
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["row", "input", "class", "probability", "cat", "dog", "bird"] and len(rows) == 6
    assert run(krun_main, cnn_graph, tmp_path / "x.npz", "-o", tmp_path / "p.npz").exit_code == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npz")[out_name], cnn["expected"], rtol=RTOL, atol=ATOL)


def test_krun_images_file_and_folder(cnn, cnn_graph, tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(cnn["x"]):
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "p.npy"
    assert run(krun_main, cnn_graph, folder, "-o", out).exit_code == 0
    np.testing.assert_allclose(np.load(out), cnn["expected"], rtol=RTOL, atol=ATOL)
    single = run(krun_main, cnn_graph, folder / "00.png")
    assert single.exit_code == 0 and "00.png" in single.output
    Image.new("RGB", (9, 8)).save(tmp_path / "big.png")
    wrong = run(krun_main, cnn_graph, tmp_path / "big.png")
    assert wrong.exit_code == 1 and "is 9x8 pixels; the model takes 8x8" in wrong.output


def test_krun_text_inputs(text_graph, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = run(krun_main, text_graph, tmp_path / "t.txt")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4 and all(any(l in line for l in ("negative", "neutral", "positive")) for line in lines[1:])
    one = run(krun_main, text_graph, "--text", TEXTS[0])
    assert one.exit_code == 0 and lines[1].split()[1] in one.output


def test_krun_text_parity_with_keras(text_graph, tmp_path):
    import keras
    expected = keras_predict(keras.saving.load_model(DEMO_MODEL), TEXTS)
    (tmp_path / "t.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    assert run(krun_main, text_graph, tmp_path / "t.txt", "-o", tmp_path / "p.npy").exit_code == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("make_input,message", [
    (lambda d: np.save(d / "x.npy", np.zeros((2, 7, 8, 3), np.float32)) or d / "x.npy", "must have shape (N, 8, 8, 3)"),
    (lambda d: np.save(d / "x.npy", np.array([{"a": 1}], dtype=object)) or d / "x.npy", "object arrays are refused"),
    (lambda d: (d / "x.bin").write_bytes(b"0") and d / "x.bin", "unknown input type .bin"),
    (lambda d: d / "absent.npy", "does not exist"),
    (lambda d: (d / "e.txt").write_text("") or d / "e.txt", "is empty"),
])
def test_krun_bad_input(cnn_graph, tmp_path, make_input, message):
    result = run(krun_main, cnn_graph, make_input(tmp_path))
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def _copy_graph(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_krun_missing_or_altered_weight_file(cnn_graph, tmp_path):
    broken = _copy_graph(cnn_graph, tmp_path / "g1")
    weight = sorted((broken / "weights").iterdir())[0]
    weight.unlink()
    result = run(krun_main, broken, "--summary")
    assert result.exit_code == 1 and "is missing from" in result.output
    altered = _copy_graph(cnn_graph, tmp_path / "g2")
    weight = sorted((altered / "weights").iterdir())[0]
    data = bytearray(weight.read_bytes())
    data[-1] ^= 1
    weight.write_bytes(bytes(data))
    result = run(krun_main, altered, "--summary")
    assert result.exit_code == 1 and "does not match its sha256" in result.output


def test_krun_needs_one_input(cnn_graph):
    result = run(krun_main, cnn_graph)
    assert result.exit_code == 2 and "exactly one of INPUT or --text" in result.output


def test_krun_summary(cnn_graph):
    result = run(krun_main, cnn_graph, "--summary")
    assert result.exit_code == 0 and "conv2d" in result.output and "Labels: cat, dog, bird" in result.output
