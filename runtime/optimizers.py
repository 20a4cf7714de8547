"""Optimizers with Keras 3's exact update rules, gradient clipping and weight decay, in float32.

Each optimizer updates a dict of float32 parameter arrays in place from a dict of gradients with
the same keys; the order of operations follows keras/src/optimizers/*.py so results match Keras's
to float32 rounding.
"""
import numpy as np

from kconvert.schema import InputDataError

from . import schedules
from .ops.embedding import IndexedRows

_F = np.float32


def dense(g):
    """A gradient as a dense array (IndexedRows summed per id)."""
    return g.dense() if isinstance(g, IndexedRows) else g


def squared(g):
    """Keras's ops.square(gradient): per lookup for IndexedRows, then summed per id."""
    return g.dense(g.rows * g.rows) if isinstance(g, IndexedRows) else g * g


def _sum_of_squares(g):
    rows = g.rows if isinstance(g, IndexedRows) else g
    return np.sum(rows * rows, dtype=_F)


def _scale(g, factor):
    return g.with_rows((g.rows * factor).astype(_F)) if isinstance(g, IndexedRows) else (g * factor).astype(_F)


class Optimizer:
    """Base: clipping (clipnorm, clipvalue, global_clipnorm), weight decay, the iteration counter."""

    defaults = {}

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise InputDataError(f"{type(self).__name__} has no option(s) {sorted(unknown)}; "
                                 f"options: learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, "
                                 f"{', '.join(self.defaults)}")
        if sum(v is not None and v > 0 for v in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise InputDataError("use only one of clipnorm, clipvalue and global_clipnorm")
        # A number, or a Keras learning-rate schedule ({'class_name', 'config'} as the graph records it).
        self.learning_rate = schedules.get(learning_rate) if isinstance(learning_rate, dict) else learning_rate
        if not isinstance(self.learning_rate, schedules.Schedule):
            self.learning_rate = float(self.learning_rate)
        self.weight_decay, self.clipnorm, self.clipvalue, self.global_clipnorm = \
            weight_decay, clipnorm, clipvalue, global_clipnorm
        self.hyper = {**self.defaults, **hyper}
        self.iterations = 0
        self.slots = {}

    def _clip(self, grads):
        if self.clipnorm and self.clipnorm > 0:
            clip = _F(self.clipnorm)
            return {k: _scale(g, clip / np.maximum(np.sqrt(_sum_of_squares(g)), clip)) for k, g in grads.items()}
        if self.global_clipnorm and self.global_clipnorm > 0:
            norm = np.sqrt(sum(_sum_of_squares(g) for g in grads.values()), dtype=_F)
            scale = _F(self.global_clipnorm) * np.minimum(_F(1) / norm, _F(1) / _F(self.global_clipnorm))
            # Keras scales with Python's `*`, which turns IndexedSlices dense (duplicates summed).
            return {k: (dense(g) * scale).astype(_F) for k, g in grads.items()}
        if self.clipvalue and self.clipvalue > 0:
            v = self.clipvalue
            return {k: g.with_rows(np.clip(g.rows, -v, v)) if isinstance(g, IndexedRows) else np.clip(g, -v, v)
                    for k, g in grads.items()}
        return grads

    def apply(self, grads, params):
        """One Keras optimizer step: clip, decay weights, update, count the iteration."""
        grads = self._clip({k: g.with_rows(g.rows.astype(_F)) if isinstance(g, IndexedRows) else np.asarray(g, dtype=_F)
                            for k, g in grads.items()})
        lr = self.current_learning_rate()
        if self.weight_decay:
            for k in grads:
                params[k] -= params[k] * _F(self.weight_decay) * lr
        for k, g in grads.items():
            self.update(k, g, params[k], lr)
        self.iterations += 1

    def slot_names(self):
        """The slots this optimizer keeps per trainable weight, as Keras 3 names them."""
        return ()

    def restore(self, iterations, slots, params):
        """Continue from a saved state: the step count and {(slot, param key): array}, one per slot and param."""
        expected = {(name, key) for name in self.slot_names() for key in params}
        if set(slots) != expected:
            wrong = sorted(map(str, set(slots) ^ expected))[:3]
            raise InputDataError(f"the graph's optimizer state does not fit {type(self).__name__} with slots "
                                 f"{list(self.slot_names())} on the model's {len(params)} trainable weights "
                                 f"(e.g. {', '.join(wrong)}); pass optimizer=... to start one afresh")
        for (name, key), value in slots.items():
            if np.shape(value) != params[key].shape:
                raise InputDataError(f"the graph's optimizer state holds {name} of {key} shaped {np.shape(value)}, "
                                     f"not {params[key].shape}")
        self.iterations = int(iterations)
        self.slots = {k: np.array(v, dtype=_F) for k, v in slots.items()}

    def slot(self, name, key, like):
        """A zero-initialised optimizer variable (momentum, velocity, ...) for one parameter."""
        return self.slots.setdefault((name, key), np.zeros_like(like))

    def current_learning_rate(self):
        """The float32 learning rate of the next update (a schedule's value at the steps taken so far)."""
        if isinstance(self.learning_rate, schedules.Schedule):
            return _F(self.learning_rate(self.iterations))
        return _F(self.learning_rate)

    def get_config(self):
        """Hyper-parameters, as Keras's get_config names them."""
        lr = self.learning_rate
        return {"learning_rate": lr.get_config() if isinstance(lr, schedules.Schedule) else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                "global_clipnorm": self.global_clipnorm, **self.hyper}


class SGD(Optimizer):
    """keras.optimizers.SGD: momentum and Nesterov momentum."""
    defaults = {"momentum": 0.0, "nesterov": False}

    def __init__(self, learning_rate=0.01, **kwargs):  # Keras's SGD default (the others' is 0.001)
        super().__init__(learning_rate, **kwargs)

    def slot_names(self):
        """Keras 3's SGD: a momentum per weight unless momentum is 0."""
        return ("momentum",) if self.hyper["momentum"] != 0 else ()

    def update(self, key, g, var, lr):
        """Keras's SGD.update_step for one variable."""
        momentum = self.hyper["momentum"]
        g = dense(g)  # SGD is linear in g: summing duplicate rows first is exact
        if momentum != 0:
            m = self.slot("momentum", key, var)
            m[...] = m * _F(momentum) - g * lr
            if self.hyper["nesterov"]:
                var += m * _F(momentum) - g * lr
            else:
                var += m
        else:
            var -= g * lr


class Adam(Optimizer):
    """keras.optimizers.Adam, with amsgrad."""
    defaults = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False}

    def slot_names(self):
        """Keras's Adam: momentum and velocity per weight, and velocity_hat with amsgrad."""
        return ("momentum", "velocity") + (("velocity_hat",) if self.hyper["amsgrad"] else ())

    def update(self, key, g, var, lr):
        """Keras's Adam.update_step for one variable."""
        h = self.hyper
        step = _F(self.iterations + 1)
        beta_1_power = np.power(_F(h["beta_1"]), step)
        beta_2_power = np.power(_F(h["beta_2"]), step)
        alpha = lr * np.sqrt(_F(1) - beta_2_power) / (_F(1) - beta_1_power)
        m, v = self.slot("momentum", key, var), self.slot("velocity", key, var)
        m += (dense(g) - m) * _F(1 - h["beta_1"])
        v += (squared(g) - v) * _F(1 - h["beta_2"])
        if h["amsgrad"]:
            v_hat = self.slot("velocity_hat", key, var)
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        var -= (m * alpha) / (np.sqrt(v) + _F(h["epsilon"]))


class AdamW(Adam):
    """keras.optimizers.AdamW: Adam with decoupled weight decay (default 0.004)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """keras.optimizers.RMSprop, with momentum and centered."""
    defaults = {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False}

    def slot_names(self):
        """Keras's RMSprop: velocity per weight, momentum when momentum > 0, average_gradient when centered."""
        return (("velocity",) + (("momentum",) if self.hyper["momentum"] > 0 else ())
                + (("average_gradient",) if self.hyper["centered"] else ()))

    def update(self, key, g, var, lr):
        """Keras's RMSprop.update_step for one variable."""
        h = self.hyper
        rho = _F(h["rho"])
        velocity = self.slot("velocity", key, var)
        velocity[...] = rho * velocity + _F(1 - h["rho"]) * squared(g)
        g = dense(g)
        if h["centered"]:
            avg = self.slot("average_gradient", key, var)
            avg[...] = rho * avg + _F(1 - h["rho"]) * g
            denominator = velocity - avg * avg + _F(h["epsilon"])
        else:
            denominator = velocity + _F(h["epsilon"])
        increment = (lr * g) / np.sqrt(denominator)
        if h["momentum"] > 0:
            m = self.slot("momentum", key, var)
            m[...] = _F(h["momentum"]) * m + increment
            var -= m
        else:
            var -= increment


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}
_KERAS_ONLY_KEYS = {"name", "use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                    "gradient_accumulation_steps", "is_legacy_optimizer", "jit_compile", "decay"}


def get(spec, **overrides):
    """An optimizer from a name ('adam'), a Keras class name with config (a graph's training record), or itself."""
    if isinstance(spec, Optimizer):
        return spec
    config = {}
    if isinstance(spec, dict):
        config = dict(spec.get("config") or {})
        spec = spec.get("class_name", "")
    cls = OPTIMIZERS.get(str(spec).lower())
    if cls is None:
        raise InputDataError(f"unsupported optimizer {spec!r}; supported: {', '.join(OPTIMIZERS)}")
    for key in _KERAS_ONLY_KEYS:
        value = config.pop(key, None)
        if key in ("use_ema",) and value:
            raise InputDataError("optimizers with use_ema are not supported")
        if key == "gradient_accumulation_steps" and value:
            raise InputDataError("gradient_accumulation_steps is not supported")
        if key == "decay" and value:  # tf-keras legacy optimizers: lr / (1 + decay * iterations)
            raise InputDataError(f"the legacy optimizer option decay={value} is not supported; pass a learning rate, "
                                 "or recompile the Keras model with an InverseTimeDecay schedule")
    config.update({k: v for k, v in overrides.items() if v is not None})
    if cls is not AdamW and config.get("weight_decay") == 0:
        config["weight_decay"] = None
    return cls(**config)
