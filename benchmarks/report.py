"""bench.json -> bench.md: the tables, with the issue's targets checked."""
import statistics


def _ms(seconds):
    return f"{seconds * 1e3:.2f} ms"


def _spread(runs):
    # The host's load moves memory-bound NumPy passes more than TensorFlow's kernels: show how far.
    return f"{min(runs) * 1e3:.2f} - {max(runs) * 1e3:.2f} ms"


def _ratio(entry):
    ratio = entry.get("time_ratio_to_kconvert")
    return "" if ratio is None else f"{ratio:.2f}x"


def _paired_ratio(figure, other, ours):
    """Median over repeats of other's time / ours (the backends took turns within each repeat)."""
    return statistics.median(o / k for o, k in zip(figure[other]["runs_s"], figure[ours]["runs_s"]))


def targets(report):
    """The issue's targets as (description, measured, met) rows, for the models that were run."""
    models, rows = report["models"], []

    def ratio(name, figure, other):
        return models[name][figure][other]["time_ratio_to_kconvert"]

    for name, label in (("cnn", "CNN"), ("cnn_bn", "CNN with BatchNormalization")):
        if name not in models:
            continue
        r = ratio(name, "throughput", "keras_compiled")
        rows.append((f"{label} inference throughput >= 1.0x Keras compiled", f"{r:.2f}x", r >= 1.0))
        if "kconvert_processes" in models[name]["throughput"]:
            r = _paired_ratio(models[name]["throughput"], "keras_compiled", "kconvert_processes")
            rows.append((f"{label} inference throughput >= 1.0x Keras compiled, worker processes", f"{r:.2f}x",
                         r >= 1.0))
        share = models[name]["throughput"]["kconvert"]["gflops"] / report["matmul_peak_gflops"]
        rows.append((f"{label} inference >= 60% of the matmul peak", f"{share:.0%}", share >= 0.6))
        r = ratio(name, "train_epoch", "keras_fit")
        rows.append((f"{label} training epoch <= 1.5x Keras's time", f"{1 / r:.2f}x Keras's time", 1 / r <= 1.5))
    for name, label in (("bilstm", "BiLSTM"), ("rnn2", "SimpleRNN"), ("bigru", "BiGRU")):
        if name in models:
            r = ratio(name, "throughput", "keras_compiled")
            rows.append((f"{label} inference >= 1.0x Keras compiled", f"{r:.2f}x", r >= 1.0))
            r = ratio(name, "train_epoch", "keras_fit")
            rows.append((f"{label} training epoch <= 1.0x Keras's time", f"{1 / r:.2f}x Keras's time", 1 / r <= 1.0))
    if "bilstm" in models:
        ms = models["bilstm"]["latency_batch1"]["kconvert"]["median_s"] * 1e3
        rows.append(("BiLSTM batch-1 latency < 2 ms", f"{ms:.2f} ms", ms < 2.0))
    for name, result in models.items():
        small, large = (result["predict_peak_mb"][k] for k in sorted(result["predict_peak_mb"], key=int))
        rows.append((f"{name}: predict peak memory bounded by the batch (10x rows, < 1.1x memory)",
                     f"{small:.1f} -> {large:.1f} MB", large < 1.1 * small))
        rows.append((f"{name}: kconvert CLI converts in < 1 s", f"{result['convert_cli_s']:.2f} s",
                     result["convert_cli_s"] < 1.0))
    s = report["import_runtime_s"]
    rows.append(("import kconvert.runtime < 0.3 s", f"{s:.3f} s", s < 0.3))
    return rows


def markdown(report):
    """The benchmark report as Markdown."""
    env = report["environment"]
    models = report["models"]
    out = ["# kconvert benchmarks", ""]
    if report.get("quick"):
        out += ["**Quick run: inputs are too small for the figures to mean anything.**", ""]
    onnx = f", ONNX Runtime {env['onnxruntime']} (idle threads not spinning)" if "onnxruntime" in env else ""
    setup = (f"Python {env['python']} on {env['machine']} ({env['cpus']} CPUs), NumPy {env['numpy']}, "
             f"TensorFlow {env['tensorflow']}{onnx}; threads per backend: {env['threads']} "
             f"(TF intra {env['tf_intra_op_threads']}, inter {env['tf_inter_op_threads']}); "
             f"BLAS pools: {env['blas_pools']}; kconvert predict splits each batch over "
             f"{env.get('kconvert_predict_threads', 1)} thread(s); glibc malloc keeps freed memory "
             f"(reuse_freed_memory): {'yes' if env.get('reuse_freed_memory') else 'no'}.")
    method = (f"Medians of {report['sizes']['repeats']} runs, with the fastest and slowest run next to them. "
              "'other/kconvert' is the median over runs of (other backend's time / kconvert's time), the backends "
              "taking turns in rotating order: above 1 means kconvert is faster. Keras's model.predict takes its "
              "throughput turns in rounds of its own (the threads it starts and ends per call leave kconvert's "
              "worker thread on a cold malloc arena otherwise), its ratio pairing its n-th run with kconvert's n-th. "
              "kconvert_processes is kconvert's predict on Model.worker_processes: each batch's rows split between "
              "the benchmark's process and threads - 1 worker processes, started before the timings.")
    out += [setup, "", method, ""]

    out += ["## Targets", "", "| target | measured | met |", "|---|---:|:---:|"]
    out += [f"| {what} | {value} | {'yes' if met else '**no**'} |" for what, value, met in targets(report)]
    out.append("")
    sections = [("Inference throughput (batch 256)", "throughput"),
                ("Batch-1 latency (per call)", "latency_batch1"),
                ("One training epoch (CNN batch 64, text batch 32)", "train_epoch")]
    for title, figure in sections:
        out += [f"## {title}", "", "| model | backend | median | fastest - slowest run | rows/s | other/kconvert |",
                "|---|---|---:|---:|---:|---:|"]
        for name, result in models.items():
            for backend, entry in result[figure].items():
                rate = f"{entry['rows_per_s']:.0f}" if "rows_per_s" in entry else ""
                out.append(f"| {name} | {backend} | {_ms(entry['median_s'])} | {_spread(entry['runs_s'])} | {rate} "
                           f"| {_ratio(entry)} |")
        out.append("")

    samples = report.get("matmul_peak_samples_gflops", [])
    sampled = f" (best of samples {', '.join(f'{p:.0f}' for p in samples)})" if len(samples) > 1 else ""
    out += ["## Other figures", "", "| figure | value |", "|---|---:|",
            f"| NumPy float32 matmul peak{sampled} | {report['matmul_peak_gflops']:.1f} GFLOP/s |",
            f"| `import kconvert.runtime` | {report['import_runtime_s'] * 1e3:.0f} ms |"]
    for name in ("cnn", "cnn_bn"):
        for backend, entry in models.get(name, {}).get("throughput", {}).items():
            share = entry["gflops"] / report["matmul_peak_gflops"]
            out.append(f"| {name} inference {backend} (direct-convolution FLOPs) | {entry['gflops']:.1f} GFLOP/s "
                       f"({share:.0%} of peak) |")
    for name, result in models.items():
        out.append(f"| convert {name}: `kconvert` CLI wall time | {result['convert_cli_s'] * 1e3:.0f} ms |")
        out.append(f"| convert {name}: in-process `convert()` | {result['convert_in_process_s'] * 1e3:.0f} ms |")
        for rows, mb in result["predict_peak_mb"].items():
            out.append(f"| {name}: kconvert predict peak traced memory (threads=1), {rows} rows | {mb:.1f} MB |")
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in result["max_abs_diff_vs_keras"].items())
        out.append(f"| {name}: max abs difference to Keras | {diffs} |")
    out += [f"| process max RSS | {report['process_max_rss_mb']:.0f} MB |", ""]
    return "\n".join(out) + "\n"
