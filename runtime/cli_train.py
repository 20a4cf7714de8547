"""`ktrain`: keep training (or train from scratch) a kgraph model in NumPy and save it as a new graph."""
import os
import sys

import click
import numpy as np

from kconvert.schema import KConvertError

from . import load, reuse_freed_memory
from .inputs import read_training_data
from .training import EarlyStopping, row_classes


def class_weights(spec, y, labels):
    """--class-weight as a {class index: weight} dict: 'balanced' (n / (classes x count), scikit-learn's rule,
    over the classes present) or NAME=W,... with label names or class indices."""
    if spec is None:
        return None
    if spec == "balanced":
        classes = row_classes(y)
        present, counts = np.unique(classes, return_counts=True)
        return {int(c): len(classes) / (len(present) * int(n)) for c, n in zip(present, counts, strict=True)}
    weights = {}
    for item in spec.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            index = labels.index(name) if labels and name in labels else int(name)
            weights[index] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=WEIGHT (a label name or class index, and a number); "
                                     "e.g. --class-weight negative=2,neutral=1 or --class-weight balanced",
                                     param_hint="--class-weight") from None
        if not sep or not np.isfinite(weights[index]):
            raise click.BadParameter(f"{item!r} is not NAME=WEIGHT with a finite weight", param_hint="--class-weight")
    return weights


class _Progress:
    """A progress bar per epoch, with the running loss and metrics, then one summary line."""

    def __init__(self, epochs):
        self.epochs, self.bar, self.logs = epochs, None, {}

    def on_epoch_begin(self, epoch, steps):
        """Open this epoch's bar."""
        self.bar = click.progressbar(length=steps, label=f"Epoch {epoch + 1}/{self.epochs}", width=30,
                                     item_show_func=lambda _: "  ".join(f"{k} {v:.4f}" for k, v in self.logs.items()),
                                     file=sys.stderr)
        self.bar.__enter__()

    def on_batch_end(self, step, logs):
        """Advance the bar and show the running logs."""
        self.logs = logs
        self.bar.update(1, step)

    def on_epoch_end(self, epoch, logs):
        """Close the bar and print the epoch's logs."""
        self.bar.__exit__(None, None, None)
        click.echo(f"Epoch {epoch + 1}/{self.epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("graph", type=click.Path())
@click.argument("train_data", type=click.Path())
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the trained graph (a valid kgraph folder).")
@click.option("--validation", type=click.Path(), help="Validation data, in the same forms as TRAIN_DATA.")
@click.option("--validation-split", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Hold out this fraction (the last rows, as Keras does) when --validation is not given.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--optimizer", help="sgd, adam, adamw or rmsprop, started afresh (default: what the model was "
                                   "compiled with, continuing from its saved state when the graph has one).")
@click.option("--learning-rate", type=float, help="Override the optimizer's learning rate.")
@click.option("--loss", help="Loss name (default: what the model was compiled with).")
@click.option("--metrics", default="accuracy", show_default=True, help="Comma-separated: accuracy, macro_f1.")
@click.option("--from-scratch", is_flag=True, help="Reinitialise all weights (Keras's default initialisers) first.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for shuffling, dropout and --from-scratch.")
@click.option("--no-shuffle", is_flag=True, help="Keep the data order in every epoch.")
@click.option("--early-stopping", "patience", type=click.IntRange(min=0),
              help="Stop when val_loss has not improved for this many epochs and restore the best weights.")
@click.option("--class-weight", help="Weigh training rows by class: 'balanced' (n / (classes x count)) or "
              "NAME=W,... with label names or class indices (others weigh 1).")
@click.option("--pixel-scale", default=1.0, show_default=True, type=float, help="Multiply image pixels (0-255) by this.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads to train on (default: OpenBLAS's thread count). Graphs of dense, conv, pooling, "
                   "normalization, merge, reshaping and dropout layers split each batch's rows over them; graphs "
                   "with recurrent layers or embeddings train each batch whole.")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
def main(graph, train_data, out_dir, validation, validation_split, epochs, batch_size, optimizer, learning_rate, loss,
         metrics, from_scratch, seed, no_shuffle, patience, class_weight, pixel_scale, threads, force):
    """Train GRAPH on TRAIN_DATA in pure NumPy and write the result to -o OUT_DIR.

    TRAIN_DATA is a .npz with arrays x and y, a CSV with columns text,label (for text graphs), or a
    folder of class subfolders of images. Label names map to the graph's labels when it has them.
    Per-row weights (Keras's sample_weight) come from an array sample_weight in the .npz or a
    column weight in the CSV, for training and validation data alike.

    \b
    Example:
      ktrain sentiment train.csv --validation valid.csv --epochs 5 -o sentiment-finetuned
    """
    reuse_freed_memory()  # a short-lived process: keeping freed arrays for reuse only saves page faults
    try:
        if os.path.lexists(out_dir) and not force:
            raise click.ClickException(f"{out_dir} already exists; pass --force to replace it")
        model = load(graph)
        if from_scratch:
            model.reinitialize(seed)
        x, y, sample_weight = read_training_data(train_data, model, pixel_scale)
        validation_data = None
        if validation:
            vx, vy, vw = read_training_data(validation, model, pixel_scale)
            validation_data = (vx, vy) if vw is None else (vx, vy, vw)
        # The graph's optimizer continues from its saved state (as Keras's after load_model); --optimizer starts one.
        spec = model.optimizer if optimizer is None else optimizer
        if spec is None:
            spec = "adam"
        if learning_rate is not None and isinstance(spec, str):
            spec = {"class_name": spec, "config": {"learning_rate": learning_rate}}
        elif learning_rate is not None:
            spec.learning_rate = float(learning_rate)
        stopper = EarlyStopping(patience=patience, restore_best_weights=True) if patience is not None else None
        if stopper and validation_data is None and not validation_split:
            raise click.UsageError("--early-stopping needs --validation or --validation-split")
        model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                  validation_split=0.0 if validation_data else validation_split, shuffle=not no_shuffle, seed=seed,
                  loss=loss, optimizer=spec, metrics=[m for m in metrics.split(",") if m],
                  early_stopping=stopper, callbacks=[_Progress(epochs)],
                  sample_weight=sample_weight, class_weight=class_weights(class_weight, y, model.labels),
                  threads=threads)
        path = model.save(out_dir, force=force)
    except KConvertError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None
    click.echo(f"Wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
