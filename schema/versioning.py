"""Format identity, semver checks and the chain of one-step migrations between format versions."""
from .errors import GraphError

FORMAT = "kgraph"
FORMAT_VERSION = "1.4.0"

# One-step upgrades, keyed by the (major, minor) they upgrade *from*; each returns a document of
# the next version. 1.1 only added an optional field (training.optimizer_state), 1.2 an op (gru), 1.3 ops
# (batch_norm and others) and 1.4 ops (depthwise_conv2d, separable_conv2d), so older documents need no rewrite
# and the chain is empty; a minor that must rewrite would add MIGRATIONS[(1, 4)] = _from_1_4.
MIGRATIONS = {}


def parse_version(text):
    """Parse 'MAJOR.MINOR.PATCH' into a tuple of ints, or raise GraphError."""
    parts = str(text).split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise GraphError(f"format_version {text!r} is not MAJOR.MINOR.PATCH; the file is not a kgraph document")
    return tuple(int(p) for p in parts)


def check_version(doc):
    """Refuse documents that are not kgraph or come from a newer major version."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GraphError(f"not a kgraph document: 'format' must be {FORMAT!r}")
    found = parse_version(doc.get("format_version"))
    ours = parse_version(FORMAT_VERSION)
    if found[0] > ours[0]:
        raise GraphError(
            f"graph format {doc['format_version']} is newer than this kconvert reads "
            f"(format {ours[0]}.x); upgrade kconvert to load it"
        )
    if found[0] < ours[0]:
        raise GraphError(f"graph format {doc['format_version']} is older than any format this kconvert knows")
    return found


def migrate(doc):
    """Upgrade an older-minor document to the current version through one-step migrations."""
    version = check_version(doc)
    ours = parse_version(FORMAT_VERSION)
    while version[:2] < ours[:2]:
        step = MIGRATIONS.get(version[:2])
        if step is None:  # minors only add optional fields: nothing to rewrite
            break
        doc = step(doc)
        version = parse_version(doc["format_version"])
    return doc
