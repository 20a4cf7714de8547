"""A model.summary()-like table of a graph document."""
import math

from .catalogue import state_weights


def _shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def format_summary(doc, tensors):
    """Return a text table: node, op, output shape, parameter count, plus totals."""
    rows = [(spec["name"], "input", _shape(spec["shape"]) + f" {spec['dtype']}", 0) for spec in doc["inputs"]]
    for node in doc["nodes"]:
        params = sum(math.prod(w["shape"]) for w in node["weights"].values())
        shape, dtype = tensors[node["name"]]
        extra = f" {dtype}" if dtype != "float32" else ""
        op = node["op"] + (f"({node['attrs']['layer']})" if node["op"] == "bidirectional" else "")
        if "mask" in node:
            op += f" mask={node['mask']}"
        rows.append((node["name"], op, _shape(shape) + extra, params))
    header = ("Node", "Op", "Output shape", "Params")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + f"  {{:>{widths[3]}}}"
    out = [line.format(*header), "-" * (sum(widths) + 6)]
    out += [line.format(*r) for r in rows]
    total = sum(r[3] for r in rows)
    frozen = sum(math.prod(node["weights"][w]["shape"]) for node in doc["nodes"]  # Keras counts state as non-trainable
                 for w in set((node.get("training") or {}).get("non_trainable", ())) | state_weights(node["op"]))
    out += ["-" * (sum(widths) + 6), f"Total params: {total:,}",
            f"Trainable params: {total - frozen:,}", f"Non-trainable params: {frozen:,}"]
    out.append("Outputs: " + ", ".join(o["name"] for o in doc["outputs"]))
    if doc.get("labels"):
        out.append("Labels: " + ", ".join(doc["labels"]))
    return "\n".join(out)
