"""Every resource limit kconvert enforces on files it reads, in one place (documented in SECURITY.md).

A file over a limit is refused with a one-line error naming the limit; none of these can be
switched off by anything inside a file.
"""

MAX_CONFIG_JSON_BYTES = 32 * 1024 * 1024        # a Keras config.json / model_config attribute
MAX_JSON_DEPTH = 200                            # nesting of any JSON document read
MAX_GRAPH_JSON_BYTES = 64 * 1024 * 1024         # graph.json
MAX_RANK = 8                                    # dimensions of any tensor or weight
MAX_TENSOR_BYTES = 2 * 1024 ** 3                # one weight (HDF5 dataset, .npy file)
MAX_TOTAL_WEIGHT_BYTES = 8 * 1024 ** 3          # all weights of one model
MAX_ZIP_MEMBER_BYTES = 8 * 1024 ** 3            # one member of a .keras archive, uncompressed
MAX_ZIP_RATIO = 200                             # uncompressed / compressed size of a member over 1 MiB
MAX_ZIP_MEMBERS = 10_000                        # members of a .keras archive
MAX_LAYERS = 10_000                             # layers of a model / nodes of a graph
MAX_ASSET_BYTES = 256 * 1024 * 1024             # a vocabulary (asset or --vocabulary file)
MAX_TEXT_INPUT_BYTES = 512 * 1024 * 1024        # a .txt input file for krun
MAX_HDF5_OBJECTS = 200_000                      # groups and datasets of one HDF5 file
MAX_HDF5_READ_BYTES = 3 * MAX_TOTAL_WEIGHT_BYTES  # all float datasets of one HDF5 file (weights, Adam's two slots)
# A damaged file can hang the HDF5 library: reading one may take HDF5_READ_SECONDS plus a second per
# HDF5_READ_BYTES_PER_SECOND bytes of file before it is refused.
HDF5_READ_SECONDS = 30
HDF5_READ_BYTES_PER_SECOND = 20 * 1024 ** 2


def json_depth(value, limit=MAX_JSON_DEPTH):
    """Nesting depth of parsed JSON, iteratively (no recursion limit), stopping past `limit`."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest
