"""`kexperiment`: run the experiment specs (Keras vs the NumPy runtime) and write reports."""
import os

import click

from kconvert.runtime import reuse_freed_memory

from . import cifar10, nusax
from .report import render
from .runner import run, train_model
from .specs import bundled_specs, load_spec

DATA_ENV = "KCONVERT_DATA"


def _data_dir(value):
    path = value or os.environ.get(DATA_ENV)
    if not path:
        for guess in ("../shared/data", "data"):
            if os.path.isdir(guess):
                return guess
        raise click.ClickException(
            f"no data folder: pass --data-dir or set {DATA_ENV}. It must hold nusax-sentiment/<language>/*.csv "
            "(https://github.com/IndoNLP/nusax, datasets/sentiment) and/or CIFAR-10 "
            "(https://www.cs.toronto.edu/~kriz/cifar.html: python or binary batches, or class folders)")
    return path


def _run_one(spec_ref, out_dir, data_dir, quick, only, seed, seeds, resume):
    try:
        spec = load_spec(spec_ref)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        results = run(spec, data_dir, out_dir, quick=quick, only=only, seed=seed, log=click.echo,
                      seeds=1 if quick and seeds is None else seeds, resume=resume)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    labels = list(nusax.LABELS) if spec["data"]["dataset"] == "nusax" else list(cifar10.CLASSES)
    text = render(results, out_dir, labels)
    click.echo("\n".join(line for line in text.splitlines() if line.startswith("- ")))
    click.echo(f"Wrote {os.path.join(out_dir, 'report.md')} and results.json")


OPTIONS = [
    click.option("--data-dir", help=f"Folder holding nusax-sentiment/ and cifar10/ (default: ${DATA_ENV})."),
    click.option("--quick", is_flag=True, help="Small subsets and 1-2 epochs: a first look, and what CI runs."),
    click.option("--seed", type=click.IntRange(0), help="First seed (default: the spec's training.seed, else 0)."),
    click.option("--seeds", type=click.IntRange(1, 20), help="Seeds per variant (default: the spec's, else 1)."),
    click.option("--resume", is_flag=True,
                 help="Keep the variants OUT_DIR's results.json already holds (same spec, seeds, settings and "
                      "versions) and run the rest; results.json is rewritten after every variant."),
]


def _with_options(f):
    for option in reversed(OPTIONS):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproduce the CNN (CIFAR-10) and RNN/LSTM (NusaX-Senti) experiments: every variant is trained
    in Keras, converted and run by the NumPy runtime, and trained again from scratch in NumPy.

    \b
    Example:
      kexperiment run lstm_nusax -o results/lstm --quick
      kexperiment all -o results
    """
    reuse_freed_memory()  # for Keras and the runtime alike, so their timings stay comparable


@main.command("run")
@click.argument("spec")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--only", multiple=True, help="Run only this variant (repeatable), e.g. --only units=64.")
@_with_options
def run_command(spec, out_dir, only, data_dir, quick, seed, seeds, resume):
    """Run SPEC (a .toml path or a bundled spec name) into OUT_DIR."""
    _run_one(spec, out_dir, _data_dir(data_dir), quick, list(only), seed, seeds, resume)


@main.command("all")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False))
@_with_options
def all_command(out_dir, data_dir, quick, seed, seeds, resume):
    """Run every bundled spec into OUT_DIR/<spec name>."""
    data = _data_dir(data_dir)
    for name in bundled_specs():
        _run_one(name, os.path.join(out_dir, name), data, quick, [], seed, seeds, resume)


@main.command("train")
@click.argument("spec")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The .keras file to write (replaced only once training has finished).")
@click.option("--variant", help="Train this variant (e.g. units=128) instead of the spec's model section.")
@click.option("--data-dir", help=f"Folder holding nusax-sentiment/ and cifar10/ (default: ${DATA_ENV}).")
@click.option("--seed", type=click.IntRange(0), help="Seed (default: the spec's training.seed, else 0).")
def train_command(spec, output, variant, data_dir, seed):
    """Train SPEC's model in Keras (deterministic ops, early stopping on validation) and save it, e.g. the
    model `make demo` ships: kexperiment train examples/demo/sentiment.toml -o examples/models/sentiment.keras"""
    if not output.endswith(".keras"):
        raise click.ClickException(f"--output must end in .keras (got {output!r})")
    try:
        summary = train_model(load_spec(spec), _data_dir(data_dir), output, variant=variant, seed=seed,
                              log=click.echo)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    test = summary["test"]
    click.echo(f"test macro-F1 {test['macro_f1']:.4f}, accuracy {test['accuracy']:.4f}, predicted classes "
               f"{test['predicted_classes']} ({summary['epochs']} epochs, {summary['train_seconds']:.1f}s)")
    click.echo(f"Wrote {output}")


@main.command("list")
def list_command():
    """List the bundled specs and their variants."""
    from .specs import variants
    for name in bundled_specs():
        click.echo(f"{name}: " + ", ".join(v[1] for v in variants(load_spec(name))))


if __name__ == "__main__":
    main()
