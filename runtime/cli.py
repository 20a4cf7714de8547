"""`krun`: run a kgraph model on files or texts and print or save the predictions."""
import csv
import io
import json
import os

import click
import numpy as np

from kconvert.schema import KConvertError

from . import load, reuse_freed_memory
from .inputs import read_input

OUTPUT_EXTENSIONS = (".npy", ".npz", ".json", ".csv")


def _classify(output, labels):
    """(predicted index, its score) per row for a (N, classes) output."""
    index = np.argmax(output, axis=1)
    return index, output[np.arange(len(output)), index]


def _class_name(i, labels):
    return labels[i] if labels and i < len(labels) else str(i)


def _table(outputs, rows, labels):
    lines = []
    for name, out in outputs.items():
        if len(outputs) > 1:
            lines.append(f"[{name}]")
        if out.ndim == 2 and out.shape[1] > 1:
            index, score = _classify(out, labels)
            width = max([len(_class_name(i, labels)) for i in index] + [5])
            lines.append(f"{'row':>4}  {'class':<{width}}  {'prob':>6}  input")
            for r, (i, s) in enumerate(zip(index, score)):
                text = rows[r] if r < len(rows) else str(r)
                text = text if len(text) <= 60 else text[:57] + "..."
                lines.append(f"{r:>4}  {_class_name(i, labels):<{width}}  {s:6.4f}  {text}")
        elif out.ndim == 2 and out.shape[1] == 1:
            lines.append(f"{'row':>4}  {'value':>10}  input")
            lines += [f"{r:>4}  {v:10.6f}  {rows[r] if r < len(rows) else r}" for r, v in enumerate(out[:, 0])]
        else:
            lines.append(f"output {name} has shape {out.shape}; use -o out.npy to save it")
    return "\n".join(lines)


def _write(path, outputs, rows, labels):
    ext = os.path.splitext(path)[1].lower()
    first = next(iter(outputs.values()))
    if ext == ".npy":
        if len(outputs) > 1:
            raise click.ClickException("the model has several outputs: use -o out.npz")
        np.save(path, first, allow_pickle=False)
    elif ext == ".npz":
        np.savez(path, **outputs)
    elif ext == ".json":
        records = []
        for r in range(len(first)):
            record = {"row": r, "input": rows[r] if r < len(rows) else None}
            for name, out in outputs.items():
                value = out[r]
                entry = {"output": value.tolist()}
                if out.ndim == 2 and out.shape[1] > 1:
                    i = int(np.argmax(value))
                    entry.update({"class": _class_name(i, labels), "index": i, "probability": float(value[i])})
                record[name] = entry
            records.append(record)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1, ensure_ascii=False)
    elif ext == ".csv":
        if len(outputs) > 1 or first.ndim != 2:
            raise click.ClickException("CSV output needs one (rows, classes) output: use -o out.npz")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        columns = [_class_name(i, labels) for i in range(first.shape[1])]
        writer.writerow(["row", "input", "class", "probability"] + columns)
        for r, value in enumerate(first):
            i = int(np.argmax(value))
            writer.writerow([r, rows[r] if r < len(rows) else "", _class_name(i, labels), f"{value[i]:.6g}"]
                            + [f"{v:.6g}" for v in value])
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
    else:
        raise click.ClickException(f"unknown output type {ext or '(none)'}: use {', '.join(OUTPUT_EXTENSIONS)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("graph", type=click.Path())
@click.argument("input_path", metavar="INPUT", required=False, type=click.Path())
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable), instead of INPUT.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Save predictions: .npy (raw array), .npz (several outputs), .json or .csv (readable).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Rows per batch.")
@click.option("--pixel-scale", default=1.0, show_default=True, type=float,
              help="Multiply image pixels (0-255) by this, e.g. 0.00392156862745098 for models trained on x/255 "
                   "without a Rescaling layer.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads to compute with, at most (default: OpenBLAS's count, OPENBLAS_NUM_THREADS or the "
                   "cores). Each batch's rows are split over them (with recurrent layers: a Bidirectional's two "
                   "directions); 1 runs on one core.")
@click.option("--processes", is_flag=True,
              help="Split each batch's rows between this process and child processes instead of threads (Linux, "
                   "numeric inputs; --threads of them in all). They share no GIL: the benchmark models' predict in "
                   "0.84-0.96x the time of threads, after ~0.35 s to start them.")
@click.option("--strict", is_flag=True, help="Refuse inputs that contain NaN or Inf.")
@click.option("--numerics", type=click.Choice(["numpy", "tensorflow"]), default="numpy", show_default=True,
              help="tensorflow: compute tanh and sigmoid with TensorFlow's own CPU kernels, so outputs follow "
                   "Keras's float32 rounding (trained LSTMs: 4-20x closer to Keras; up to ~3x slower). numpy: "
                   "NumPy's more accurate ones.")
@click.option("--summary", is_flag=True, help="Print the model summary and exit.")
def main(graph, input_path, texts, output, batch_size, pixel_scale, threads, processes, strict, numerics,
         summary):
    """Run a kgraph model (GRAPH: graph.json or its folder) on INPUT in pure NumPy.

    INPUT is a .npy array (batch first), a .npz of named inputs, a .txt with one text per line,
    an image, or a folder of images. Without -o, prints one row per input: the predicted class
    (its label when the graph has labels) and its probability.

    \b
    Examples:
      krun sentiment sentences.txt
      krun sentiment --text "makanannya enak sekali"
      krun cnn test_images/ -o predictions.csv
    """
    reuse_freed_memory()  # a short-lived process: keeping freed arrays for reuse only saves page faults
    try:
        model = load(graph)
        if summary:
            click.echo(model.summary())
            return
        if bool(texts) == bool(input_path):
            raise click.UsageError("give exactly one of INPUT or --text")
        if texts:
            data, rows = list(texts), list(texts)
        else:
            data, rows = read_input(input_path, model, pixel_scale)
        rows_in = len(next(iter(data.values()))) if isinstance(data, dict) and data else len(data)
        if rows_in == 0:
            raise click.ClickException(f"{input_path} has no rows to run")
        if processes:
            with model.worker_processes(threads) as workers:
                result = workers.predict(data, batch_size=batch_size, strict=strict, numerics=numerics)
        else:
            result = model.predict(data, batch_size=batch_size, strict=strict, threads=threads, numerics=numerics)
        outputs = result if isinstance(result, dict) else {model.outputs[0]["name"]: result}
        if output:
            _write(output, outputs, rows, model.labels)
            click.echo(f"Wrote {output} ({len(next(iter(outputs.values())))} rows)")
        else:
            click.echo(_table(outputs, rows, model.labels))
    except KConvertError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None


if __name__ == "__main__":
    main()
