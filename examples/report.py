"""Render results.json as report.md and PNG plots (training curves per group, confusion matrices)."""
import os
import re

import numpy as np

BARS = {"lstm_nusax": 0.70, "rnn_nusax": 0.60, "cnn_cifar10": 0.70}  # best-variant test macro-F1 the issue asks for


def _f1(scores):
    std = scores.get("macro_f1_std")
    return f"{scores['macro_f1']:.4f}" + (f" ± {std:.4f}" if std else "")


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _plot_curves(rows, group, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for i, row in enumerate(rows):
        color = f"C{i}"
        for source, style in (("keras", "-"), ("runtime_trained", "--")):
            history = row[source]["history"]
            label = f"{row['variant']} ({'Keras' if source == 'keras' else 'NumPy'})"
            for r, prefix in enumerate(("", "val_")):
                for c, metric in enumerate(("loss", "accuracy")):
                    values = history.get(prefix + metric)
                    if values:
                        axes[r, c].plot(range(1, len(values) + 1), values, style, color=color, label=label)
    for r, split in enumerate(("training", "validation")):
        for c, metric in enumerate(("loss", "accuracy")):
            axes[r, c].set_title(f"{split} {metric}")
            axes[r, c].grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[1, 1].legend(fontsize=7)
    fig.suptitle(f"{group}: Keras (solid) vs runtime trained from scratch (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_confusions(row, labels, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (("Keras", "keras"), ("converted graph", "runtime"), ("runtime-trained", "runtime_trained"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (title, key) in zip(axes, panels):
        matrix = np.array(row[key]["confusion"])
        ax.imshow(matrix, cmap="Blues")
        ax.set_title(f"{title}\nmacro-F1 {row[key]['macro_f1']:.3f}")
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        if len(labels) <= 10:
            for (r, c), v in np.ndenumerate(matrix):
                ax.text(c, r, str(v), ha="center", va="center", fontsize=6,
                        color="white" if v > matrix.max() / 2 else "black")
    axes[0].set_ylabel("true")
    fig.suptitle(row["variant"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render(results, out_dir, labels):
    """Write report.md and the PNG plots into out_dir; return the report text."""
    spec, rows = results["spec"], results["variants"]
    lines = [f"# {spec['name']}", "", spec.get("description", ""), "",
             f"Data: train {results['data_sizes']['train']}, validation {results['data_sizes']['valid']}, "
             f"test {results['data_sizes']['test']}" + (" (quick subset: numbers are not meaningful)" if results["quick"] else ""),
             f"Seeds {results['seed']}..{results['seed'] + results.get('seeds', 1) - 1} (scores are means over seeds, "
             f"± their standard deviation; agreement and |dp| are the worst case); "
             + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for group in groups:
        members = [r for r in rows if r["group"] == group]
        lines += [f"## {group}", "",
                  "| variant | Keras macro-F1 | Keras acc | runtime macro-F1 | runtime acc | agreement | max abs dp "
                  "| max abs dp, TF kernels | Keras vs float64 | runtime vs float64 | Keras infer s | runtime infer s "
                  "| runtime-trained macro-F1 | Keras train s | runtime train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in members:
            k, c, t = r["keras"], r["runtime"], r["runtime_trained"]
            tf_delta = c.get("max_abs_probability_difference_tensorflow_numerics")  # absent in older results
            lines.append(f"| {r['variant']} | {_f1(k)} | {k['accuracy']:.4f} | {c['macro_f1']:.4f} | "
                         f"{c['accuracy']:.4f} | {100 * c['agreement']:.2f}% | {c['max_abs_probability_difference']:.1e} | "
                         f"{'-' if tf_delta is None else f'{tf_delta:.1e}'} | {c['keras_vs_float64']:.1e} | {c['runtime_vs_float64']:.1e} | {k['inference_seconds']:.2f} | {c['inference_seconds']:.2f} | {_f1(t)} | "
                         f"{k['train_seconds']:.1f} | {t['train_seconds']:.1f} |")
        curves = f"curves_{_slug(group)}.png"
        _plot_curves(members, group, os.path.join(out_dir, curves))
        lines += ["", f"![{group}]({curves})", ""]
    for r in rows:
        _plot_confusions(r, labels, os.path.join(out_dir, f"confusion_{_slug(r['variant'])}.png"))
    lines += ["## Checks", ""] + _checks(spec, rows) + ["", "Confusion matrices (Keras, converted graph, "
              "runtime-trained): " + ", ".join(f"[{r['variant']}](confusion_{_slug(r['variant'])}.png)" for r in rows)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    return text


def _checks(spec, rows):
    """The issue's bars, each stated with the measured number and PASS/FAIL."""
    out = []
    agreement = min(r["runtime"]["agreement"] for r in rows)
    delta = max(r["runtime"]["max_abs_probability_difference"] for r in rows)
    verdict = "PASS" if agreement == 1.0 and delta <= 1e-5 else "FAIL"
    if all("max_abs_probability_difference_tensorflow_numerics" in r["runtime"] for r in rows):
        tf_agreement = min(r["runtime"]["agreement_tensorflow_numerics"] for r in rows)
        tf_delta = max(r["runtime"]["max_abs_probability_difference_tensorflow_numerics"] for r in rows)
        out.append(f"- converted graph vs Keras, run with numerics=\"tensorflow\" (TensorFlow's tanh and sigmoid "
                   f"kernels): lowest agreement {100 * tf_agreement:.2f}% (bar 100%), largest |dp| {tf_delta:.2e} "
                   f"(bar 1e-5): {'PASS' if tf_agreement == 1.0 and tf_delta <= 1e-5 else 'FAIL'}")
        out.append(f"- converted graph vs Keras, run with the default numerics (NumPy's kernels): lowest agreement "
                   f"{100 * agreement:.2f}%, largest |dp| {delta:.2e}"
                   + (" (over the bar)" if verdict == "FAIL" else ""))
    else:  # results written before numerics="tensorflow" existed
        out.append(f"- converted graph vs Keras: lowest agreement {100 * agreement:.2f}% (bar 100%), largest |dp| "
                   f"{delta:.2e} (bar 1e-5): {verdict}")
    keras_error = max(r["runtime"]["keras_vs_float64"] for r in rows)
    runtime_error = max(r["runtime"]["runtime_vs_float64"] for r in rows)
    out.append(f"- float32 rounding, measured against the graph run in float64: Keras up to {keras_error:.2e}, "
               f"runtime up to {runtime_error:.2e} (|dp| above is at most their sum)")
    best = max(r["keras"]["macro_f1"] for r in rows)
    bar = BARS.get(spec["name"])
    if bar is not None:
        out.append(f"- best Keras test macro-F1 {best:.4f} (bar {bar}): {'PASS' if best >= bar else 'FAIL'}")
    collapsed = [r["variant"] for r in rows if r["keras"]["predicted_classes"] == 1]
    out.append(f"- variants collapsed to one class: {', '.join(collapsed) or 'none'}: {'FAIL' if collapsed else 'PASS'}")
    gaps = [abs(r["runtime_trained"]["macro_f1"] - r["keras"]["macro_f1"]) for r in rows]
    out.append(f"- runtime-trained vs Keras-trained mean macro-F1: largest gap {max(gaps):.4f} (bar 0.05): "
               f"{'PASS' if max(gaps) <= 0.05 else 'FAIL'}")
    return out
