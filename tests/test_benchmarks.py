"""benchmarks/bench.py in --quick mode: every figure is produced, and every backend computed the same thing."""
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run(tmp_path):
    # A fresh process: the script pins thread counts before NumPy and TensorFlow load.
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--no-onnx",
                             "--models", "rnn2", "--threads", "1", "-o", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["environment"]["threads"] == 1 and report["environment"]["tf_intra_op_threads"] == 1
    assert report["environment"]["kconvert_predict_threads"] == 1  # OPENBLAS_NUM_THREADS governs the split too
    assert report["environment"]["reuse_freed_memory"] is (platform.libc_ver()[0] == "glibc")
    rnn = report["models"]["rnn2"]
    # The timed backends must compute the model Keras computes, or their times mean nothing.
    assert max(rnn["max_abs_diff_vs_keras"].values()) < 1e-5
    assert set(rnn["throughput"]) == {"kconvert", "kconvert_processes", "keras_compiled", "keras_predict"}
    assert set(rnn["latency_batch1"]) == {"kconvert", "keras_compiled", "keras_predict", "keras_eager"}
    assert set(rnn["train_epoch"]) == {"kconvert", "keras_fit"}
    assert rnn["latency_calls"]["keras_eager"] < rnn["latency_calls"]["kconvert"] == report["sizes"]["latency_calls"]
    for figure in ("throughput", "latency_batch1", "train_epoch"):
        for backend, entry in rnn[figure].items():
            assert entry["median_s"] > 0 and len(entry["runs_s"]) == report["sizes"]["repeats"]
            assert (backend == "kconvert") == ("time_ratio_to_kconvert" not in entry)
    markdown = (tmp_path / "bench.md").read_text()
    assert "| SimpleRNN inference >= 1.0x Keras compiled |" in markdown and "Quick run" in markdown
    # the spread of the runs is reported next to each median, from the runs themselves
    runs = rnn["throughput"]["kconvert"]["runs_s"]
    assert f"| {min(runs) * 1e3:.2f} - {max(runs) * 1e3:.2f} ms |" in markdown
