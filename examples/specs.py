"""Experiment specs: TOML files validated by specs/spec.schema.json, expanded into one variant per value."""
import copy
import json
import os
import tomllib
from importlib import resources

import jsonschema

SPEC_DIR = resources.files(__package__).joinpath("specs")


def bundled_specs():
    """Names of the specs that ship with kconvert."""
    return sorted(p.name[:-5] for p in SPEC_DIR.iterdir() if p.name.endswith(".toml"))


def load_spec(path_or_name):
    """Parse and validate a spec (a path, or the name of a bundled spec); raise ValueError naming the problem."""
    path = path_or_name
    if not os.path.exists(path) and path_or_name in bundled_specs():
        path = str(SPEC_DIR.joinpath(f"{path_or_name}.toml"))
    try:
        with open(path, "rb") as fh:
            spec = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"no spec {path_or_name!r}: pass a .toml path or one of {', '.join(bundled_specs())}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    schema = json.loads(SPEC_DIR.joinpath("spec.schema.json").read_text(encoding="utf-8"))
    try:
        jsonschema.validate(spec, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "spec"
        raise ValueError(f"{path}: {where}: {exc.message}") from None
    for variation in spec.get("variations", []):
        if variation["parameter"] not in spec["model"]:
            raise ValueError(f"{path}: variation {variation['group']!r} varies {variation['parameter']!r}, "
                             "which the model section does not set")
    return spec


def _label(value):
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def variants(spec):
    """[(group, variant name, model config)] for every value of every variation (one factor at a time);
    a spec without variations has one variant, its model section, called 'base'."""
    if not spec.get("variations"):
        return [("Model", "base", copy.deepcopy(spec["model"]))]
    out = []
    for variation in spec["variations"]:
        for value in variation["values"]:
            config = copy.deepcopy(spec["model"])
            config[variation["parameter"]] = value
            out.append((variation["group"], f"{variation['parameter']}={_label(value)}", config))
    return out


def config_key(config):
    """A key under which identical model configs (the base value of several groups) share one run."""
    return json.dumps(config, sort_keys=True)
