"""Render the op catalogue as Markdown: `python -m kconvert.schema.catalogue_doc > schema/OPS.md`."""
import json

from .catalogue import load_catalogue
from .versioning import FORMAT_VERSION


def _schema_text(schema):
    if "$ref" in schema:
        return {"#/pair": "[int, int]", "#/activation": "activation", "#/number_or_list": "number or [number, ...]"}[schema["$ref"]]
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in schema]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def render():
    """Return the catalogue as a Markdown document."""
    cat = load_catalogue()
    out = [f"# kgraph op catalogue (format {FORMAT_VERSION})", "",
           "Generated from `schema/ops.v1.json` by `python -m kconvert.schema.catalogue_doc`; do not edit by hand.",
           "This page is the reference for implementing another kgraph runtime.", "", "## Conventions", ""]
    out += [f"- **{k}**: {v}" for k, v in cat["conventions"].items()]
    out += ["", "## Ops", ""]
    for name, op in cat["ops"].items():
        out += [f"### `{name}` (since {op['since_version']})", "", op["summary"], ""]
        out += [f"- input: {i}" for i in op["inputs"]]
        out += [f"- output: {op['output']}", f"- mask: {op['mask']}", ""]
        if op["attrs"]:
            out += ["| attr | type | Keras default | meaning |", "|---|---|---|---|"]
            for attr, spec in op["attrs"].items():
                default = json.dumps(spec["default"]) if "default" in spec else "(required)"
                out.append(f"| `{attr}` | {_schema_text(spec['schema'])} | {default} | {spec.get('doc', '')} |")
            out.append("")
        if op["weights"]:
            out += ["| weight | shape | present | layout |", "|---|---|---|---|"]
            for weight, spec in op["weights"].items():
                out.append(f"| `{weight}` | {spec['shape']} | {('if ' + spec['when']) if 'when' in spec else 'always'} "
                           f"| {spec.get('doc', '')} |")
            out.append("")
        for asset, spec in op.get("assets", {}).items():
            out += [f"- asset `{asset}`: {spec['doc']}", ""]
    out += ["## Activations", "", "| name | definition |", "|---|---|"]
    out += [f"| `{k}` | {v.replace('|', chr(92) + '|')} |" for k, v in sorted(cat["activations"].items())]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
