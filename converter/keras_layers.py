"""One converter function per Keras layer class, found through one dispatch table.

Each function gets the layer call, its weights (in Keras's order) and the conversion context, and
returns the kgraph node for it; layouts are fixed here, once (Keras's layouts already match the
catalogue's: kernels (kh, kw, in, out) and (in, out), LSTM gates i, f, c, o).
"""
from kconvert.schema import ACTIVATIONS, ConversionError

from .keras_file import RECURRENT_CLASSES

# Keras names that mean the same function as a catalogue name.
_ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu", None: "linear"}
_ACTIVATION_MODULES = ("keras.activations", "keras.src.activations.activations", "keras.src.activations")


def refuse(call, option, value, hint):
    """Raise the one-line error for an unsupported option of a layer."""
    raise ConversionError(f"layer {call.name!r} ({call.class_name}): {option}={value!r} is not supported; {hint}")


def activation_name(call, value, keras_major, option="activation"):
    """Map a Keras activation (name or serialized function) to a catalogue activation name."""
    if isinstance(value, dict):
        inner = value.get("config")
        if value.get("module") in _ACTIVATION_MODULES and isinstance(inner, str):
            value = inner
        else:
            refuse(call, option, value.get("class_name", value), "only Keras's built-in activations are supported")
    if value == "hard_sigmoid" and keras_major < 3:
        return "hard_sigmoid_slope_0_2"  # tf-keras: clip(0.2 x + 0.5); Keras 3: relu6(x + 3) / 6
    name = _ACTIVATION_ALIASES.get(value, value)
    if name not in ACTIVATIONS:
        refuse(call, option, value, f"supported activations: {', '.join(ACTIVATIONS)}")
    return name


def _check_common(call, *, channels_last=False):
    cfg = call.config
    dtype = cfg.get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    if dtype not in (None, "float32"):
        refuse(call, "dtype", dtype, "only float32 models are supported (no mixed precision or quantization)")
    for key in ("lora_rank", "quantization_config"):
        if cfg.get(key):
            refuse(call, key, cfg[key], "export the float32 weights without LoRA or quantization")
    if channels_last and cfg.get("data_format", "channels_last") != "channels_last":
        refuse(call, "data_format", cfg["data_format"], "only channels_last models are supported")


def _pair(call, key, value):
    if isinstance(value, int):
        value = [value, value]
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        refuse(call, key, value, "expected one or two positive integers")
    return list(value)


def _weights(call, arrays, names):
    """Pair Keras's weights (in order) with catalogue weight names."""
    if len(arrays) != len(names):
        raise ConversionError(
            f"layer {call.name!r} ({call.class_name}) has {len(arrays)} weight(s) in the file, expected "
            f"{len(names)} ({', '.join(names) or 'none'}); the file does not match its config")
    return dict(zip(names, arrays))


def convert_dense(call, arrays, ctx):
    """Dense -> dense."""
    _check_common(call)
    cfg = call.config
    attrs = {"units": cfg["units"], "activation": activation_name(call, cfg.get("activation"), ctx.major),
             "use_bias": bool(cfg.get("use_bias", True))}
    names = ["kernel", "bias"] if attrs["use_bias"] else ["kernel"]
    return "dense", attrs, _weights(call, arrays, names), "pass"


def _single(call, key, value):
    """One positive integer from an int or a one-element list (Keras's 1-D sizes serialize as [k])."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        refuse(call, key, value, "expected one positive integer")
    return value


def _conv(op, sizes, paddings):
    """The converter of Conv2D (sizes=_pair) or Conv1D (sizes=_single, causal padding too) to `op`; an incoming
    mask is dropped, as Keras drops it."""
    def convert(call, arrays, ctx):
        _check_common(call, channels_last=True)
        cfg = call.config
        if cfg.get("groups", 1) != 1:
            refuse(call, "groups", cfg["groups"], "grouped convolutions are not supported")
        padding = cfg.get("padding", "valid")
        if padding not in paddings:
            refuse(call, "padding", padding, f"use {' or '.join(repr(p) for p in paddings)}")
        attrs = {"filters": cfg["filters"], "kernel_size": sizes(call, "kernel_size", cfg["kernel_size"]),
                 "strides": sizes(call, "strides", cfg.get("strides", 1)), "padding": padding,
                 "dilation_rate": sizes(call, "dilation_rate", cfg.get("dilation_rate", 1)),
                 "activation": activation_name(call, cfg.get("activation"), ctx.major),
                 "use_bias": bool(cfg.get("use_bias", True))}
        unit = sizes(call, "unit", 1)
        if attrs["strides"] != unit and attrs["dilation_rate"] != unit:
            refuse(call, "strides with dilation_rate", (attrs["strides"], attrs["dilation_rate"]),
                   "Keras itself refuses this")
        names = ["kernel", "bias"] if attrs["use_bias"] else ["kernel"]
        return op, attrs, _weights(call, arrays, names), "drop"
    convert.__doc__ = f"Conv{'2D' if sizes is _pair else '1D'} -> {op}."
    return convert


convert_conv2d = _conv("conv2d", _pair, ("valid", "same"))


def _depthwise_attrs(call, ctx):
    """The attrs DepthwiseConv2D and SeparableConv2D share, checked."""
    _check_common(call, channels_last=True)
    cfg = call.config
    padding = cfg.get("padding", "valid")
    if padding not in ("valid", "same"):
        refuse(call, "padding", padding, "use 'valid' or 'same'")
    multiplier = cfg.get("depth_multiplier", 1)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
        refuse(call, "depth_multiplier", multiplier, "expected a positive integer")
    attrs = {"depth_multiplier": multiplier, "kernel_size": _pair(call, "kernel_size", cfg["kernel_size"]),
             "strides": _pair(call, "strides", cfg.get("strides", 1)), "padding": padding,
             "dilation_rate": _pair(call, "dilation_rate", cfg.get("dilation_rate", 1)),
             "activation": activation_name(call, cfg.get("activation"), ctx.major),
             "use_bias": bool(cfg.get("use_bias", True))}
    if attrs["strides"] != [1, 1] and attrs["dilation_rate"] != [1, 1]:
        refuse(call, "strides with dilation_rate", (attrs["strides"], attrs["dilation_rate"]),
               "Keras itself refuses this")
    return attrs


def convert_depthwise_conv2d(call, arrays, ctx):
    """DepthwiseConv2D -> depthwise_conv2d; an incoming mask is dropped, as Keras drops it."""
    attrs = _depthwise_attrs(call, ctx)
    names = ["kernel", "bias"] if attrs["use_bias"] else ["kernel"]
    return "depthwise_conv2d", attrs, _weights(call, arrays, names), "drop"


def convert_separable_conv2d(call, arrays, ctx):
    """SeparableConv2D -> separable_conv2d; an incoming mask is dropped, as Keras drops it."""
    attrs = dict(filters=call.config["filters"], **_depthwise_attrs(call, ctx))
    names = ["depthwise_kernel", "pointwise_kernel"] + (["bias"] if attrs["use_bias"] else [])
    return "separable_conv2d", attrs, _weights(call, arrays, names), "drop"
convert_conv1d = _conv("conv1d", _single, ("valid", "same", "causal"))


def _pool(op, sizes=_pair):
    """The converter of a Pooling2D class (sizes=_pair) or a Pooling1D one (sizes=_single) to `op`."""
    def convert(call, arrays, ctx):
        _check_common(call, channels_last=True)
        cfg = call.config
        pool = sizes(call, "pool_size", cfg.get("pool_size", 2))
        strides = sizes(call, "strides", cfg["strides"]) if cfg.get("strides") is not None else pool
        padding = cfg.get("padding", "valid")
        if padding not in ("valid", "same"):
            refuse(call, "padding", padding, "use 'valid' or 'same'")
        return op, {"pool_size": pool, "strides": strides, "padding": padding}, _weights(call, arrays, []), "drop"
    convert.__doc__ = f"Pooling{'2D' if sizes is _pair else '1D'} -> {op}."
    return convert


def _global_pool(op, mask_rule="drop"):
    def convert(call, arrays, ctx):
        _check_common(call, channels_last=True)
        return op, {"keepdims": bool(call.config.get("keepdims", False))}, _weights(call, arrays, []), mask_rule
    convert.__doc__ = f"GlobalPooling -> {op}."
    return convert


def convert_flatten(call, arrays, ctx):
    """Flatten -> flatten."""
    _check_common(call, channels_last=True)
    return "flatten", {}, _weights(call, arrays, []), "drop"


def _int_list(call, key, value, minimum):
    """A list of integers >= minimum from a Keras config value (a tuple serializes as a list)."""
    if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        refuse(call, key, value, f"expected a list of integers >= {minimum}")
    return list(value)


def _two_pairs(call, key, value):
    """[[top, bottom], [left, right]] from Keras's int, (rows, columns) or ((top, bottom), (left, right))."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
        value = [[value[0], value[0]], [value[1], value[1]]]
    if not (isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                        for n in v) for v in value)):
        refuse(call, key, value, "expected ((top, bottom), (left, right)) of non-negative integers")
    return [list(v) for v in value]


def convert_reshape(call, arrays, ctx):
    """Reshape -> reshape."""
    _check_common(call)
    return "reshape", {"target_shape": _int_list(call, "target_shape", call.config.get("target_shape"), -1)}, \
        _weights(call, arrays, []), "drop"


def convert_permute(call, arrays, ctx):
    """Permute -> permute."""
    _check_common(call)
    return "permute", {"dims": _int_list(call, "dims", call.config.get("dims"), 1)}, _weights(call, arrays, []), "drop"


def _padding_or_cropping(op, key):
    def convert(call, arrays, ctx):
        _check_common(call, channels_last=True)
        return op, {key: _two_pairs(call, key, call.config.get(key))}, _weights(call, arrays, []), "drop"
    convert.__doc__ = f"{'ZeroPadding2D' if op == 'zero_padding2d' else 'Cropping2D'} -> {op}."
    return convert


def convert_up_sampling2d(call, arrays, ctx):
    """UpSampling2D (nearest) -> up_sampling2d."""
    _check_common(call, channels_last=True)
    cfg = call.config
    if cfg.get("interpolation", "nearest") != "nearest":
        refuse(call, "interpolation", cfg["interpolation"], "only nearest up-sampling is supported")
    return "up_sampling2d", {"size": _pair(call, "size", cfg.get("size", 2))}, _weights(call, arrays, []), "drop"


def convert_dropout(call, arrays, ctx):
    """Dropout -> dropout (identity at inference)."""
    _check_common(call)
    cfg = call.config
    if cfg.get("noise_shape") is not None:
        refuse(call, "noise_shape", cfg["noise_shape"], "only elementwise dropout is supported")
    seed = cfg.get("seed")
    return "dropout", {"rate": float(cfg.get("rate", 0.0)), "seed": seed if isinstance(seed, int) else None}, \
        _weights(call, arrays, []), "pass"


def convert_activation(call, arrays, ctx):
    """Activation -> activation."""
    _check_common(call)
    name = activation_name(call, call.config.get("activation"), ctx.major)
    return "activation", {"function": name}, _weights(call, arrays, []), "pass"


def convert_relu(call, arrays, ctx):
    """ReLU -> relu."""
    _check_common(call)
    cfg = call.config
    max_value = cfg.get("max_value")
    attrs = {"max_value": None if max_value is None else float(max_value),
             "negative_slope": float(cfg.get("negative_slope", 0.0)), "threshold": float(cfg.get("threshold", 0.0))}
    return "relu", attrs, _weights(call, arrays, []), "pass"


def convert_leaky_relu(call, arrays, ctx):
    """LeakyReLU -> leaky_relu (Keras 3 negative_slope, tf-keras alpha)."""
    _check_common(call)
    cfg = call.config
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    return "leaky_relu", {"negative_slope": float(slope)}, _weights(call, arrays, []), "pass"


def convert_softmax(call, arrays, ctx):
    """Softmax -> softmax."""
    _check_common(call)
    axis = call.config.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            refuse(call, "axis", axis, "softmax over several axes is not supported")
        axis = axis[0]
    return "softmax", {"axis": axis}, _weights(call, arrays, []), "refuse"


def convert_rescaling(call, arrays, ctx):
    """Rescaling -> rescaling."""
    _check_common(call)
    cfg = call.config

    def number_or_list(key, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            return [float(v) for v in value]
        refuse(call, key, value, "expected a number or a flat list of numbers")

    attrs = {"scale": number_or_list("scale", cfg.get("scale")), "offset": number_or_list("offset", cfg.get("offset", 0.0))}
    return "rescaling", attrs, _weights(call, arrays, []), "pass"


def convert_batch_normalization(call, arrays, ctx):
    """BatchNormalization -> batch_norm (Keras 3 and tf-keras; tf-keras writes a built layer's axis as a list)."""
    _check_common(call)
    cfg = call.config
    axis = cfg.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if isinstance(axis, bool) or not isinstance(axis, int):
        refuse(call, "axis", axis, "normalization over one features axis is supported")
    for key, hint in (("renorm", "Batch Renormalization is not supported"),
                      ("virtual_batch_size", "ghost batches are not supported"),
                      ("adjustment", "an adjustment function is Python code, which kconvert never runs")):
        if cfg.get(key) not in (None, False):
            refuse(call, key, cfg[key], hint)
    rank = len(ctx.input_shape)
    # tf-keras runs its fused kernel on rank-4 inputs normalized on axis 1 or 3; that kernel's moving-variance
    # update uses the unbiased batch variance (Keras 3 and tf-keras's other path use the biased one).
    fused = ctx.major < 3 and rank == 4 and -rank <= axis < rank and axis % rank in (1, 3)
    attrs = {"axis": axis, "momentum": float(cfg.get("momentum", 0.99)), "epsilon": float(cfg.get("epsilon", 1e-3)),
             "center": bool(cfg.get("center", True)), "scale": bool(cfg.get("scale", True)),
             "unbiased_moving_variance": fused}
    names = (["gamma"] if attrs["scale"] else []) + (["beta"] if attrs["center"] else [])
    return "batch_norm", attrs, _weights(call, arrays, names + ["moving_mean", "moving_variance"]), "honour"


def convert_layer_normalization(call, arrays, ctx):
    """LayerNormalization -> layer_norm (axis as a list; tf-keras writes a built layer's as one)."""
    _check_common(call)
    cfg = call.config
    axis = cfg.get("axis", -1)
    axis = axis if isinstance(axis, list) else [axis]
    if not axis or any(isinstance(a, bool) or not isinstance(a, int) for a in axis):
        refuse(call, "axis", cfg.get("axis"), "expected an axis or a list of axes")
    if cfg.get("rms_scaling"):
        refuse(call, "rms_scaling", True, "Keras deprecated it (it scales by the variance); use center/scale")
    attrs = {"axis": axis, "epsilon": float(cfg.get("epsilon", 1e-3)), "center": bool(cfg.get("center", True)),
             "scale": bool(cfg.get("scale", True))}
    names = (["gamma"] if attrs["scale"] else []) + (["beta"] if attrs["center"] else [])
    return "layer_norm", attrs, _weights(call, arrays, names), "pass"


def _merge(op):
    def convert(call, arrays, ctx):
        _check_common(call)
        attrs = {}
        if op == "concatenate":
            axis = call.config.get("axis", -1)
            if isinstance(axis, bool) or not isinstance(axis, int):
                refuse(call, "axis", axis, "expected one axis")
            attrs["axis"] = axis
        # Keras 3 computes masked Multiply, Maximum and Minimum with other values; none is supported.
        return op, attrs, _weights(call, arrays, []), "refuse"
    convert.__doc__ = f"Merge layer -> {op}."
    return convert


def convert_embedding(call, arrays, ctx):
    """Embedding -> embedding (mask_zero becomes a not_equal node on the ids, made when a consumer needs it)."""
    _check_common(call)
    cfg = call.config
    if cfg.get("sparse"):
        refuse(call, "sparse", True, "sparse embeddings are not supported")
    attrs = {"input_dim": cfg["input_dim"], "output_dim": cfg["output_dim"]}
    return "embedding", attrs, _weights(call, arrays, ["embeddings"]), ("produce" if cfg.get("mask_zero") else "drop")


def recurrent_attrs(call, cfg, op, ctx):
    """Catalogue attrs of simple_rnn / lstm / gru from a Keras RNN config, refusing what is not supported."""
    for key, ok in (("stateful", False), ("unroll", False), ("return_state", False), ("time_major", False)):
        if cfg.get(key, ok) != ok:
            refuse(call, key, cfg[key], f"save the model with {key}=False")
    attrs = {"units": cfg["units"], "activation": activation_name(call, cfg.get("activation", "tanh"), ctx.major),
             "use_bias": bool(cfg.get("use_bias", True)),
             "return_sequences": bool(cfg.get("return_sequences", False)),
             "go_backwards": bool(cfg.get("go_backwards", False)),
             "zero_output_for_mask": bool(cfg.get("zero_output_for_mask", False)),
             "dropout": float(cfg.get("dropout", 0.0)), "recurrent_dropout": float(cfg.get("recurrent_dropout", 0.0))}
    if op in ("lstm", "gru"):
        attrs["recurrent_activation"] = activation_name(
            call, cfg.get("recurrent_activation", "sigmoid"), ctx.major, "recurrent_activation")
    if op == "gru":
        attrs["reset_after"] = bool(cfg.get("reset_after", True))  # what Keras's loader assumes when absent
    return attrs


def _recurrent(call, arrays, ctx):
    """SimpleRNN / LSTM / GRU -> simple_rnn / lstm / gru."""
    _check_common(call)
    op = RECURRENT_CLASSES[call.class_name]
    attrs = recurrent_attrs(call, call.config, op, ctx)
    names = ["kernel", "recurrent_kernel"] + (["bias"] if attrs["use_bias"] else [])
    return op, attrs, _weights(call, arrays, names), "consume"


def convert_bidirectional(call, arrays, ctx):
    """Bidirectional(SimpleRNN | LSTM | GRU) -> bidirectional."""
    _check_common(call)
    cfg = call.config
    merge = cfg.get("merge_mode", "concat")
    if merge not in ("concat", "sum", "mul", "ave"):
        refuse(call, "merge_mode", merge, "use concat, sum, mul or ave")
    inner = cfg.get("layer") or {}
    cls = inner.get("class_name")
    if cls not in RECURRENT_CLASSES:
        refuse(call, "layer", cls, "Bidirectional is supported around SimpleRNN, LSTM and GRU")
    op = RECURRENT_CLASSES[cls]
    forward = recurrent_attrs(call, inner.get("config", {}), op, ctx)
    if cfg.get("backward_layer"):
        back = cfg["backward_layer"]
        if back.get("class_name") != cls:
            refuse(call, "backward_layer", back.get("class_name"), "the backward layer must be the same class")
        backward = recurrent_attrs(call, back.get("config", {}), op, ctx)
    else:  # Keras copies the layer's config and flips go_backwards
        backward = dict(forward, go_backwards=not forward["go_backwards"])
    for side in (forward, backward):  # Bidirectional forces this on both directions
        side["zero_output_for_mask"] = side["return_sequences"]
    if forward["go_backwards"] == backward["go_backwards"]:
        refuse(call, "backward_layer.go_backwards", backward["go_backwards"], "the backward layer must run the other way")
    names = []
    for prefix, side in (("forward", forward), ("backward", backward)):
        names += [f"{prefix}_kernel", f"{prefix}_recurrent_kernel"] + ([f"{prefix}_bias"] if side["use_bias"] else [])
    attrs = {"layer": op, "merge_mode": merge, "forward": forward, "backward": backward}
    return "bidirectional", attrs, _weights(call, arrays, names), "consume"


_STANDARDIZE = {"lower_and_strip_punctuation": "lower_and_strip_punctuation", "lower": "lower",
                "strip_punctuation": "strip_punctuation", None: "none"}
_SPLIT = {"whitespace": "whitespace", "character": "character", None: "none"}


def convert_text_vectorization(call, arrays, ctx):
    """TextVectorization (int output) -> text_vectorization with its vocabulary as an asset."""
    cfg = call.config
    if cfg.get("output_mode", "int") != "int":
        refuse(call, "output_mode", cfg.get("output_mode"), "only output_mode='int' is supported")
    for key in ("ngrams",):
        if cfg.get(key) is not None:
            refuse(call, key, cfg[key], "n-grams are not supported")
    for key in ("ragged", "sparse"):
        if cfg.get(key):
            refuse(call, key, True, "use dense int output")
    if cfg.get("encoding", "utf-8") not in ("utf-8", "UTF-8", "utf8"):
        refuse(call, "encoding", cfg.get("encoding"), "only utf-8 is supported")
    standardize, split = cfg.get("standardize", "lower_and_strip_punctuation"), cfg.get("split", "whitespace")
    if not isinstance(standardize, (str, type(None))) or standardize not in _STANDARDIZE:
        refuse(call, "standardize", standardize, f"use one of {sorted(k for k in _STANDARDIZE if k)} or None")
    if not isinstance(split, (str, type(None))) or split not in _SPLIT:
        refuse(call, "split", split, f"use one of {sorted(k for k in _SPLIT if k)} or None")
    length = cfg.get("output_sequence_length")
    attrs = {"standardize": _STANDARDIZE[standardize], "split": _SPLIT[split],
             "output_sequence_length": length, "pad_index": 0, "oov_index": 1}
    vocabulary = ctx.vocabulary_for(call)
    _weights(call, arrays, [])
    return "text_vectorization", attrs, {}, "drop", {"vocabulary": vocabulary}


def convert_not_equal(call, arrays, ctx):
    """The NotEqual op-layer Keras 3 records for Embedding(mask_zero) -> not_equal."""
    if len(call.inputs) != 1 or len(call.constants) != 1 or not isinstance(call.constants[0], (int, float)):
        raise ConversionError(f"layer {call.name!r} (NotEqual) must compare one tensor with a number")
    return "not_equal", {"value": call.constants[0]}, {}, "drop"


LAYER_CONVERTERS = {
    "Dense": convert_dense,
    "Conv2D": convert_conv2d,
    "DepthwiseConv2D": convert_depthwise_conv2d,
    "SeparableConv2D": convert_separable_conv2d,
    "MaxPooling2D": _pool("max_pool2d"),
    "AveragePooling2D": _pool("avg_pool2d"),
    "GlobalAveragePooling2D": _global_pool("global_avg_pool2d"),
    "GlobalMaxPooling2D": _global_pool("global_max_pool2d"),
    "Conv1D": convert_conv1d,
    "MaxPooling1D": _pool("max_pool1d", _single),
    "AveragePooling1D": _pool("avg_pool1d", _single),
    "GlobalAveragePooling1D": _global_pool("global_avg_pool1d", "consume"),  # the mean leaves padding out
    "GlobalMaxPooling1D": _global_pool("global_max_pool1d"),
    "Flatten": convert_flatten,
    "Reshape": convert_reshape,
    "Permute": convert_permute,
    "ZeroPadding2D": _padding_or_cropping("zero_padding2d", "padding"),
    "Cropping2D": _padding_or_cropping("cropping2d", "cropping"),
    "UpSampling2D": convert_up_sampling2d,
    "Dropout": convert_dropout,
    "Activation": convert_activation,
    "ReLU": convert_relu,
    "LeakyReLU": convert_leaky_relu,
    "Softmax": convert_softmax,
    "Rescaling": convert_rescaling,
    "BatchNormalization": convert_batch_normalization,
    "Add": _merge("add"),
    "Subtract": _merge("subtract"),
    "Multiply": _merge("multiply"),
    "Average": _merge("average"),
    "Maximum": _merge("maximum"),
    "Minimum": _merge("minimum"),
    "Concatenate": _merge("concatenate"),
    "LayerNormalization": convert_layer_normalization,
    "Embedding": convert_embedding,
    "SimpleRNN": _recurrent,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "Bidirectional": convert_bidirectional,
    "TextVectorization": convert_text_vectorization,
    "NotEqual": convert_not_equal,
}
# Keras aliases that serialise under other class names.
LAYER_CONVERTERS.update({"Convolution2D": convert_conv2d, "MaxPool2D": LAYER_CONVERTERS["MaxPooling2D"],
                         "AvgPool2D": LAYER_CONVERTERS["AveragePooling2D"],
                         "GlobalAvgPool2D": LAYER_CONVERTERS["GlobalAveragePooling2D"],
                         "GlobalMaxPool2D": LAYER_CONVERTERS["GlobalMaxPooling2D"],
                         "Convolution1D": convert_conv1d, "MaxPool1D": LAYER_CONVERTERS["MaxPooling1D"],
                         "AvgPool1D": LAYER_CONVERTERS["AveragePooling1D"],
                         "GlobalAvgPool1D": LAYER_CONVERTERS["GlobalAveragePooling1D"],
                         "GlobalMaxPool1D": LAYER_CONVERTERS["GlobalMaxPooling1D"]})
