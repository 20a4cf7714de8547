"""`kconvert`: the command-line face of kconvert.converter.convert."""
import os

import click

from kconvert.schema import KConvertError

from . import convert, default_output_dir, tool_version


def _labels(value):
    if value is None:
        return None
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                return [line.strip() for line in fh if line.strip()]
        except OSError as exc:
            raise click.BadParameter(f"cannot read labels file {path}: {exc.strerror}") from None
    return [v.strip() for v in value.split(",")]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False),
              help="Graph folder to write (default: MODEL's name + .kgraph in the current folder).")
@click.option("--vocabulary", type=click.Path(dir_okay=False),
              help="Vocabulary for a TextVectorization layer: .txt with one token per line "
                   "(layer.get_vocabulary()) or a .json array. Needed for .h5 files, which do not store it.")
@click.option("--labels", help="Class names for the output, comma-separated ('neg,neu,pos') or @FILE (one per line).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--no-optimizer-state", is_flag=True,
              help="Leave out a trained model's saved optimizer state (iteration count, moments); "
                   "fit then starts its optimizer afresh, as Keras does after compile().")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the summary table.")
@click.version_option(tool_version(), prog_name="kconvert")
def main(model, out_dir, vocabulary, labels, force, no_optimizer_state, quiet):
    """Convert a Keras model (.keras or .h5, Keras 2 or 3) to a kgraph folder.

    Writes OUT/graph.json and OUT/weights/*.npy (and OUT/assets/ for vocabularies), atomically:
    on any error nothing is written. TensorFlow is not needed.

    \b
    Example:
      kconvert sentiment.keras -o sentiment --labels negative,neutral,positive
      krun sentiment --text "makanannya enak sekali"
    """
    out_dir = out_dir or default_output_dir(model)
    try:
        path = convert(model, out_dir, vocabulary=vocabulary, labels=_labels(labels), force=force,
                       summary=None if quiet else click.echo, optimizer_state=not no_optimizer_state,
                       notes=lambda text: click.echo(f"Note: {text}", err=True))
    except KConvertError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or model}") from None
    click.echo(f"Wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
