"""Experiment specs and `kexperiment`: validation, and --quick runs of every bundled spec."""
import json
import os

import pytest
from click.testing import CliRunner

from helpers import DATA_DIR
from kconvert.examples.cli import main as kexperiment
from kconvert.examples.specs import bundled_specs, load_spec, variants


def test_bundled_specs_validate_and_expand():
    assert bundled_specs() == ["cnn_cifar10", "lstm_nusax", "rnn_nusax"]
    counts = {name: len(variants(load_spec(name))) for name in bundled_specs()}
    assert counts == {"cnn_cifar10": 11, "lstm_nusax": 8, "rnn_nusax": 8}


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace('optimizer = "adam"', 'optimizer = "adagrad"'), "optimizer"),
    (lambda t: t + '\n[extra]\nx = 1\n', "Additional properties"),
    (lambda t: t.replace('parameter = "units"', 'parameter = "neurons"'), "varies 'neurons'"),
    (lambda t: t.replace("units = 64", "units = -1"), "units"),
    (lambda t: t + "\n[[[broken", "not valid TOML"),
])
def test_invalid_specs_refused(tmp_path, edit, match):
    from kconvert.examples.specs import SPEC_DIR
    text = SPEC_DIR.joinpath("lstm_nusax.toml").read_text(encoding="utf-8")
    path = tmp_path / "bad.toml"
    path.write_text(edit(text), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_spec(str(path))
    result = CliRunner().invoke(kexperiment, ["run", str(path), "-o", str(tmp_path / "o"), "--data-dir", DATA_DIR])
    assert result.exit_code == 1 and match.split("'")[0] in result.output


def test_cli_help_list_and_missing_data(tmp_path, monkeypatch):
    runner = CliRunner()
    for args in (["--help"], ["run", "--help"], ["all", "--help"]):
        assert runner.invoke(kexperiment, args).exit_code == 0
    listing = runner.invoke(kexperiment, ["list"])
    assert "lstm_nusax: layers=1" in listing.output
    monkeypatch.delenv("KCONVERT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(kexperiment, ["run", "lstm_nusax", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "pass --data-dir or set KCONVERT_DATA" in result.output
    result = runner.invoke(kexperiment, ["run", "cnn_cifar10", "-o", str(tmp_path / "o"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no CIFAR-10 under" in result.output


# One test per spec (not one `kexperiment all`) so that parallel test workers can share them out.
@pytest.mark.parametrize("name", bundled_specs())
def test_quick_run_of_every_spec(tmp_path, name):
    folder = tmp_path / name
    result = CliRunner().invoke(kexperiment, ["run", name, "--quick", "-o", str(folder), "--data-dir", DATA_DIR])
    assert result.exit_code == 0, result.output
    assert "Keras epoch 1: accuracy" in result.output and "runtime epoch 1: accuracy" in result.output  # progress
    results = json.loads((folder / "results.json").read_text())
    assert results["quick"] is True and results["versions"]["keras"]
    assert len(results["variants"]) == len(variants(load_spec(name)))
    for row in results["variants"]:
        # The conversion bars hold on any data: the graph must agree with Keras exactly.
        assert row["runtime"]["agreement"] == 1.0, (name, row["variant"])
        assert row["runtime"]["max_abs_probability_difference"] <= 1e-5, (name, row["variant"])
        assert row["runtime"]["agreement_tensorflow_numerics"] == 1.0, (name, row["variant"])
        assert row["runtime"]["max_abs_probability_difference_tensorflow_numerics"] <= 1e-5, (name, row["variant"])
        assert row["runtime_trained"]["history"]["loss"], (name, row["variant"])
    report = (folder / "report.md").read_text()
    assert "## Checks" in report and "quick subset" in report
    assert 'run with numerics="tensorflow"' in report and "max abs dp, TF kernels" in report
    pngs = [f for f in os.listdir(folder) if f.endswith(".png")]
    assert any(f.startswith("curves_") for f in pngs) and any(f.startswith("confusion_") for f in pngs)


def _check_rows(default, tensorflow=None):
    runtime = {"agreement": 1.0, "max_abs_probability_difference": default, "keras_vs_float64": 1e-6,
               "runtime_vs_float64": 1e-6}
    if tensorflow is not None:
        runtime.update(agreement_tensorflow_numerics=1.0, max_abs_probability_difference_tensorflow_numerics=tensorflow)
    scores = {"macro_f1": 0.75, "predicted_classes": 3}
    return [{"variant": "a", "runtime": runtime, "keras": scores, "runtime_trained": scores}]


def test_conversion_check_lines():
    from kconvert.examples.report import _checks
    spec = {"name": "lstm_nusax"}
    both = _checks(spec, _check_rows(1.31e-5, 9e-7))
    assert both[0].endswith("largest |dp| 9.00e-07 (bar 1e-5): PASS") and 'numerics="tensorflow"' in both[0]
    assert both[1].endswith("largest |dp| 1.31e-05 (over the bar)") and "default numerics" in both[1]
    assert _checks(spec, _check_rows(2e-6, 2e-5))[0].endswith("(bar 1e-5): FAIL")
    assert not _checks(spec, _check_rows(2e-6, 1e-6))[1].endswith("(over the bar)")
    older = _checks(spec, _check_rows(1.31e-5))  # a results.json from before numerics="tensorflow"
    assert older[0] == "- converted graph vs Keras: lowest agreement 100.00% (bar 100%), largest |dp| 1.31e-05 (bar 1e-5): FAIL"


def test_all_runs_every_bundled_spec_into_its_folder(tmp_path, monkeypatch):
    from kconvert.examples import cli
    calls = []
    monkeypatch.setattr(cli, "_run_one", lambda spec, out, data, quick, *rest: calls.append((spec, out, data, quick)))
    result = CliRunner().invoke(kexperiment, ["all", "--quick", "-o", str(tmp_path), "--data-dir", DATA_DIR])
    assert result.exit_code == 0, result.output
    assert calls == [(name, str(tmp_path / name), DATA_DIR, True) for name in bundled_specs()]


def test_seeds_are_aggregated(tmp_path):
    result = CliRunner().invoke(kexperiment, ["run", "rnn_nusax", "--quick", "--only", "units=32", "--seeds", "2",
                                              "-o", str(tmp_path), "--data-dir", DATA_DIR])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "results.json").read_text())["variants"]
    for source in ("keras", "runtime_trained"):
        per_seed = row[source]["macro_f1_per_seed"]
        assert len(per_seed) == 2 and row[source]["macro_f1"] == pytest.approx(sum(per_seed) / 2)
    assert row["seeds"] == 2 and "± " in (tmp_path / "report.md").read_text()


def test_runtime_initialisers_option(tmp_path):
    from kconvert.examples.specs import SPEC_DIR
    text = SPEC_DIR.joinpath("rnn_nusax.toml").read_text(encoding="utf-8")
    path = tmp_path / "fresh.toml"
    path.write_text(text.replace("[training]\n", '[training]\ninitial_weights = "runtime"\n'), encoding="utf-8")
    assert load_spec(str(path))["training"]["initial_weights"] == "runtime"
    result = CliRunner().invoke(kexperiment, ["run", str(path), "--quick", "--only", "units=32",
                                              "-o", str(tmp_path / "o"), "--data-dir", DATA_DIR])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "o" / "results.json").read_text())["variants"]
    assert row["runtime_trained"]["history"]["loss"] and row["runtime"]["runtime_vs_float64"] <= 1e-5


def _run_edited_spec(tmp_path, spec, old, new, only):
    """Quick-run one variant of a shipped spec with `old` replaced by `new`; returns its results row after checking
    that Keras trained it and kconvert converted, ran (as Keras, within 1e-5 of float64) and trained it."""
    from kconvert.examples.specs import SPEC_DIR
    text = SPEC_DIR.joinpath(f"{spec}.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / f"edited_{spec}.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    result = CliRunner().invoke(kexperiment, ["run", str(path), "--quick", "--only", only,
                                              "-o", str(tmp_path / "o"), "--data-dir", DATA_DIR])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "o" / "results.json").read_text())["variants"]
    assert row["runtime"]["runtime_vs_float64"] <= 1e-5 and row["runtime"]["agreement"] == 1.0
    assert row["runtime_trained"]["history"]["loss"]
    return row


def test_gru_spec_runs_both_sides(tmp_path):
    """A spec may name cell = "gru": Keras trains it, kconvert converts, runs and trains the same model."""
    _run_edited_spec(tmp_path, "rnn_nusax", 'cell = "simple_rnn"', 'cell = "gru"', "units=32")


def test_batch_norm_cnn_spec_runs_both_sides(tmp_path):
    """A CNN spec may set batch_norm = true: Keras trains Conv-BatchNormalization-ReLU blocks, kconvert
    converts them (folded in predict), runs and trains the same model."""
    _run_edited_spec(tmp_path, "cnn_cifar10", 'pooling = "max"\n', 'pooling = "max"\nbatch_norm = true\n',
                     "conv_layers=1")


def test_interrupted_run_resumes_without_rerunning(tmp_path, monkeypatch):
    from kconvert.examples import runner
    args = ["run", "rnn_nusax", "--quick", "-o", str(tmp_path), "--data-dir", DATA_DIR]
    real, calls = runner.run_variant, []

    def interrupted_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_variant", interrupted_after_one)
    result = CliRunner().invoke(kexperiment, args + ["--only", "units=32", "--only", "units=128"])
    assert result.exit_code != 0
    # The finished variant was saved before the interruption; nothing half-written is left.
    first = json.loads((tmp_path / "results.json").read_text())
    assert [row["variant"] for row in first["variants"]] == ["units=32"]
    assert os.listdir(tmp_path) == ["results.json"]

    monkeypatch.setattr(runner, "run_variant", real)
    result = CliRunner().invoke(kexperiment, args + ["--only", "units=128", "--resume"])
    assert result.exit_code == 0, result.output
    assert "units=32 (Units per layer): kept from the earlier results.json" in result.output
    rows = json.loads((tmp_path / "results.json").read_text())["variants"]
    assert [row["variant"] for row in rows] == ["units=32", "units=128"]
    assert rows[0] == first["variants"][0]  # kept as it was, not trained again
    assert "units=128" in (tmp_path / "report.md").read_text()

    result = CliRunner().invoke(kexperiment, args + ["--resume", "--seed", "5"])
    assert result.exit_code == 1 and "its seed differ from this run's" in result.output

    # A resumed run interrupted before a kept variant's place in the order still keeps that variant:
    # here layers=1 finishes (a stand-in result), layers=2 is interrupted, units=32 and 128 (kept) come later.
    configs = {name: config for _, name, config in variants(load_spec("rnn_nusax"))}
    stand_in = {**{k: v for k, v in first["variants"][0].items() if k not in ("group", "variant")},
                "config": configs["layers=1"]}

    def one_stand_in_then_interrupted(*a, **k):
        if stand_in_left:
            return stand_in_left.pop()
        raise KeyboardInterrupt

    stand_in_left = [stand_in]
    monkeypatch.setattr(runner, "run_variant", one_stand_in_then_interrupted)
    result = CliRunner().invoke(kexperiment, args + ["--only", "layers=1", "--only", "layers=2", "--resume"])
    assert result.exit_code != 0
    rows = json.loads((tmp_path / "results.json").read_text())["variants"]
    assert [row["variant"] for row in rows] == ["layers=1", "units=32", "units=128"]
