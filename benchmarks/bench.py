"""Benchmark kconvert's NumPy runtime against Keras (TensorFlow CPU) and ONNX Runtime, in one process.

    python benchmarks/bench.py -o bench-results            # what `make bench` runs
    python benchmarks/bench.py --quick --no-onnx -o /tmp/b  # a smoke run (seconds)

Every figure is the median of --repeats timed runs; the backends take turns within each repeat
(rotating who goes first), and each ratio is computed repeat by repeat, then its median taken, so
a slow moment of the machine hits both sides of a ratio (Keras's model.predict takes its throughput
turns in rounds of its own: OWN_ROUNDS). Writes bench.json and bench.md.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
MODELS = ("cnn", "bilstm", "rnn2")  # issue #5's models: what `make bench` runs
# On request (--models): the BiLSTM's shape with GRU cells; the CNN with BatchNormalization after each conv.
EXTRA_MODELS = ("bigru", "cnn_bn")
ALL_MODELS = MODELS + EXTRA_MODELS
FULL = {"repeats": 7, "cnn_infer": 512, "text_infer": 400, "cnn_train": 2048, "text_train": 500,
        "latency_calls": 50, "memory_rows": (1000, 10000)}
QUICK = {"repeats": 2, "cnn_infer": 64, "text_infer": 64, "cnn_train": 128, "text_train": 64,
         "latency_calls": 5, "memory_rows": (300, 1000)}


SLOW_CALLS = ("keras_eager", "keras_predict")  # batch-1 backends timed over a tenth of the calls

# model.predict starts and ends threads on every call (its tf.data pipeline), and glibc hands an ended thread's
# malloc arena to the next new thread: after such a call, the worker thread a split kconvert predict starts
# could land on an arena that never held its buffers. Measured on the CNN, 512 images: 6,300-7,200 page faults
# (~25 MB) in about half of the kconvert runs taking turns with model.predict, 3-5 otherwise, and those runs
# 30-40 ms slower. So model.predict's throughput is timed in rounds of its own, after the others'.
OWN_ROUNDS = ("keras_predict",)

# Pause before each timed run: TensorFlow's and OpenBLAS's worker threads spin for a while after a
# call, and would otherwise steal the CPU from whichever backend runs next.
SETTLE_S = 0.3


def set_threads(threads):
    """Pin BLAS / OpenMP pools before NumPy, TensorFlow or ONNX Runtime is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed_rounds(runs, repeats):
    """Run each callable once to warm up, then `repeats` rounds in rotating order; {name: [seconds]}."""
    for fn in runs.values():
        fn()
    names, times = list(runs), {name: [] for name in runs}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarise(times, ours="kconvert", per=1.0):
    """Median seconds (divided by `per`) for each backend and median per-repeat ratios other/ours."""
    out = {name: {"median_s": statistics.median(t) / per, "runs_s": [v / per for v in t]} for name, t in times.items()}
    for name, t in times.items():
        if name != ours:
            # > 1 means kconvert is faster: the other backend takes that many times as long
            out[name]["time_ratio_to_kconvert"] = statistics.median(o / k for o, k in zip(t, times[ours]))
    return out


def matmul_peak(repeats=7):
    """Best float32 GEMM rate of NumPy's BLAS on square matrices (GFLOP/s)."""
    import numpy as np

    best = 0.0
    rng = np.random.default_rng(0)
    for n in (1024, 2048):
        a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def subprocess_seconds(args, repeats):
    """Median wall time of a fresh process running `args` (what a user waits for)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_seconds(repeats):
    """Median time of `import kconvert.runtime` in a fresh interpreter (measured inside it)."""
    code = "import time; t = time.perf_counter(); import kconvert.runtime; print(time.perf_counter() - t)"
    values = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
              for _ in range(repeats)]
    return statistics.median(values)


def predict_peak_memory(graph_dir, make_inputs, rows, repeats=3):
    """Peak traced allocation (MB) of Model.predict over `rows` inputs at batch 256, input excluded, with
    threads=1: one batch's working set at a time. With rows split over threads the peak depends on how the
    workers' allocations overlap in time and varied by up to 10% between runs (2-layer SimpleRNN, 1000 rows:
    17.6-20.0 MB); at threads=1 it repeats to 0.01 MB. The largest of `repeats` runs."""
    import tracemalloc

    from kconvert.runtime import load

    model = load(graph_dir)
    x = make_inputs(rows)
    peaks = []
    for _ in range(repeats):
        tracemalloc.start()
        model.predict(x, batch_size=256, threads=1)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return max(peaks) / 1e6


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default="bench-results", show_default=True,
              help="Folder for bench.json, bench.md and the benchmark models.")
@click.option("--threads", type=click.IntRange(1), default=os.cpu_count(), show_default=True,
              help="Threads for every backend (BLAS/OpenMP, TensorFlow intra/inter-op, ONNX Runtime intra-op).")
@click.option("--repeats", type=click.IntRange(1), default=None, help="Timed runs per figure (default 7; 2 with --quick).")
@click.option("--quick", is_flag=True, help="Small inputs and 2 repeats: checks the script, not the speed.")
@click.option("--no-onnx", is_flag=True, help="Skip ONNX Runtime (no tf2onnx/onnxruntime installed).")
@click.option("--models", default=",".join(MODELS), show_default=True,
              help=f"Comma-separated models: any of {', '.join(ALL_MODELS)}.")
@click.option("--default-malloc", is_flag=True,
              help="Leave glibc's malloc settings alone (default: kconvert.runtime.reuse_freed_memory(), as the "
                   "kconvert CLIs do; it applies to every backend in this process).")
def main(out_dir, threads, repeats, quick, no_onnx, models, default_malloc):
    """Benchmark kconvert's runtime against Keras and ONNX Runtime on the CNN, BiLSTM and 2-layer SimpleRNN."""
    set_threads(threads)
    reused = False
    if not default_malloc:
        from kconvert.runtime import reuse_freed_memory
        reused = reuse_freed_memory()
    sizes = dict(QUICK if quick else FULL)
    sizes["repeats"] = repeats or sizes["repeats"]
    names = [m for m in models.split(",") if m]
    unknown = set(names) - set(ALL_MODELS)
    if unknown:
        raise click.BadParameter(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(ALL_MODELS)}",
                                 param_hint="--models")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = run_all(names, sizes, threads, not no_onnx, out, quick, reused)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    from report import markdown  # a sibling module (run_all put benchmarks/ on sys.path)

    (out / "bench.md").write_text(markdown(report))
    click.echo((out / "bench.md").read_text())


def environment(threads, reused):
    """Versions and thread settings, so a reader can tell what was compared."""
    import numpy as np
    import tensorflow as tf

    from kconvert.runtime import parallel

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "threads": threads, "numpy": np.__version__, "tensorflow": tf.__version__,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "reuse_freed_memory": reused, "kconvert_predict_threads": parallel.default_workers()}
    try:
        import threadpoolctl

        info["blas_pools"] = [{k: p[k] for k in ("internal_api", "num_threads", "version")}
                              for p in threadpoolctl.threadpool_info()]
    except ImportError:
        info["blas_pools"] = "threadpoolctl not installed"
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def run_all(names, sizes, threads, with_onnx, out, quick, reused=False):
    """Every figure for every model; returns the JSON-ready report."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    sys.path.insert(0, str(HERE))
    import backends
    import bench_models
    from kconvert.converter import convert

    reps = sizes["repeats"]
    report = {"environment": environment(threads, reused), "sizes": {k: v for k, v in sizes.items()}, "quick": quick,
              "import_runtime_s": import_seconds(max(reps, 3)), "models": {}}
    # The peak is sampled at the start and again right after the CNN timings, and the best sample kept:
    # one sample taken in a slow moment of a shared VM once made ONNX Runtime look 122% "of peak".
    peaks = [matmul_peak()]
    kconvert_cli = str(Path(sys.executable).parent / "kconvert")
    for name in names:
        click.echo(f"[{name}] building, saving, converting", err=True)
        model = bench_models.build(keras, name)
        keras_path, graph_dir = out / f"{name}.keras", out / f"{name}.kgraph"
        model.save(keras_path)
        start = time.perf_counter()
        convert(keras_path, graph_dir, force=True)
        result = {"convert_in_process_s": time.perf_counter() - start,
                  "convert_cli_s": subprocess_seconds([kconvert_cli, str(keras_path), "-o", str(graph_dir), "--force", "-q"],
                                                      max(reps, 3))}
        ours = backends.Runtime(graph_dir)
        others = [backends.KerasCompiled(model, tf), backends.KerasPredict(model)]
        if with_onnx:
            click.echo(f"[{name}] exporting with tf2onnx", err=True)
            others.append(backends.OnnxRuntime(model, tf, threads, str(out / f"{name}.onnx")))
        image = name.startswith("cnn")
        infer_rows = sizes["cnn_infer" if image else "text_infer"]
        x, _ = bench_models.inputs(name, infer_rows)
        reference = others[0].predict(x, 256)
        result["max_abs_diff_vs_keras"] = {b.name: float(np.max(np.abs(b.predict(x, 256) - reference)))
                                           for b in [ours] + others}

        click.echo(f"[{name}] inference throughput, batch 256 on {infer_rows} rows", err=True)
        processes = backends.RuntimeProcesses(graph_dir, threads)
        result["max_abs_diff_vs_keras"][processes.name] = float(np.max(np.abs(processes.predict(x, 256) - reference)))
        runs = {b.name: (lambda b=b: b.predict(x, 256)) for b in [ours, processes] + others}
        times = timed_rounds({n: run for n, run in runs.items() if n not in OWN_ROUNDS}, reps)
        times.update(timed_rounds({n: run for n, run in runs.items() if n in OWN_ROUNDS}, reps))
        result["throughput"] = summarise(times)
        for entry in result["throughput"].values():
            entry["rows_per_s"] = infer_rows / entry["median_s"]
        if image:
            flops = bench_models.flops_per_sample(model)
            result["flops_per_sample"] = flops
            for entry in result["throughput"].values():
                entry["gflops"] = flops * entry["rows_per_s"] / 1e9
            peaks.append(matmul_peak())

        processes.workers.close()

        click.echo(f"[{name}] batch-1 latency", err=True)
        one = x[:1]
        latency_backends = [ours] + others + [backends.KerasEager(model)]
        # Keras's eager call and model.predict take 15-700 ms per call: a tenth of the calls still gives them
        # rounds of 0.07-3.5 s, and saves the benchmark's time (50 eager calls were 20-35 s per round).
        calls = {b.name: max(1, sizes["latency_calls"] // 10) if b.name in SLOW_CALLS else sizes["latency_calls"]
                 for b in latency_backends}
        times = timed_rounds({b.name: (lambda b=b: [b.predict(one, 1) for _ in range(calls[b.name])])
                              for b in latency_backends}, reps)
        result["latency_batch1"] = summarise({name: [t / calls[name] for t in ts] for name, ts in times.items()})
        result["latency_calls"] = calls

        train_rows, batch = (sizes["cnn_train"], 64) if image else (sizes["text_train"], 32)
        click.echo(f"[{name}] one training epoch, {train_rows} rows, batch {batch}", err=True)
        xt, yt = bench_models.inputs(name, train_rows, seed=1)
        times = timed_rounds({"kconvert": lambda: ours.train_epoch(xt, yt, batch),
                              "keras_fit": lambda: others[0].train_epoch(xt, yt, batch)}, reps)
        result["train_epoch"] = summarise(times)

        click.echo(f"[{name}] predict peak memory", err=True)
        result["predict_peak_mb"] = {str(rows): predict_peak_memory(graph_dir, lambda n: bench_models.inputs(name, n)[0], rows)
                                     for rows in sizes["memory_rows"]}
        report["models"][name] = result
    import resource

    report["matmul_peak_gflops"], report["matmul_peak_samples_gflops"] = max(peaks), peaks
    report["process_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


if __name__ == "__main__":
    main()
