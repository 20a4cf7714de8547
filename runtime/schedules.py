"""Keras 3's learning-rate schedules, evaluated in float32 at the optimizer's iteration count.

Formulas and order of float32 operations follow keras/src/optimizers/schedules/learning_rate_schedule.py;
Keras calls the schedule with the number of steps taken so far (0 for the first update).
"""
import math

import numpy as np

from kconvert.schema import InputDataError

_F = np.float32


class Schedule:
    """A learning-rate schedule: `schedule(step)` is the float32 rate for the update after `step` steps."""

    defaults = {}

    def __init__(self, **config):
        config.pop("name", None)
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise InputDataError(f"{type(self).__name__} has no option(s) {sorted(unknown)}; "
                                 f"options: {', '.join(self.defaults)}")
        self.config = {**self.defaults, **config}
        missing = sorted(k for k, v in self.config.items() if v is _REQUIRED)
        if missing:
            raise InputDataError(f"{type(self).__name__} needs {', '.join(missing)}")

    def get_config(self):
        """The schedule as a graph training record stores it."""
        return {"class_name": type(self).__name__, "config": dict(self.config)}


_REQUIRED = object()


class _StepDecay(Schedule):
    """A decay driven by p = step / decay_steps (floored with staircase)."""
    defaults = {"initial_learning_rate": _REQUIRED, "decay_steps": _REQUIRED, "decay_rate": _REQUIRED,
                "staircase": False}

    def _progress(self, step):
        p = _F(step) / _F(self.config["decay_steps"])
        return np.floor(p) if self.config["staircase"] else p


class ExponentialDecay(_StepDecay):
    """initial_learning_rate * decay_rate ^ p."""

    def __call__(self, step):
        c = self.config
        return _F(c["initial_learning_rate"]) * np.power(_F(c["decay_rate"]), self._progress(step))


class InverseTimeDecay(_StepDecay):
    """initial_learning_rate / (1 + decay_rate * p)."""

    def __call__(self, step):
        c = self.config
        return _F(c["initial_learning_rate"]) / (_F(1) + _F(c["decay_rate"]) * self._progress(step))


class PiecewiseConstantDecay(Schedule):
    """values[i] for boundaries[i - 1] < step <= boundaries[i]."""
    defaults = {"boundaries": _REQUIRED, "values": _REQUIRED}

    def __init__(self, **config):
        super().__init__(**config)
        b, v = self.config["boundaries"], self.config["values"]
        if not (isinstance(b, list) and isinstance(v, list) and b and len(v) == len(b) + 1
                and all(isinstance(n, (int, float)) and math.isfinite(n) for n in b + v)
                and all(lo < hi for lo, hi in zip(b[:-1], b[1:], strict=True))):
            raise InputDataError("PiecewiseConstantDecay needs increasing numeric boundaries and one more value "
                                 "than boundaries")

    def __call__(self, step):
        b, v = self.config["boundaries"], self.config["values"]
        return _F(v[int(np.searchsorted(b, step, side="left"))])


class PolynomialDecay(Schedule):
    """(initial - end) * (1 - step / decay_steps) ^ power + end, step capped (or cycled) at decay_steps."""
    defaults = {"initial_learning_rate": _REQUIRED, "decay_steps": _REQUIRED, "end_learning_rate": 0.0001,
                "power": 1.0, "cycle": False}

    def __call__(self, step):
        c = self.config
        initial, end = _F(c["initial_learning_rate"]), _F(c["end_learning_rate"])
        step, decay_steps = _F(step), _F(c["decay_steps"])
        if c["cycle"]:
            decay_steps = decay_steps * (_F(1) if step == 0 else np.ceil(step / _F(c["decay_steps"])))
        else:
            step = min(step, decay_steps)
        p = step / decay_steps
        return (initial - end) * np.power(_F(1) - p, _F(c["power"])) + end


class CosineDecay(Schedule):
    """Cosine decay from initial_learning_rate (or from warmup_target after a linear warmup) to alpha of it."""
    defaults = {"initial_learning_rate": _REQUIRED, "decay_steps": _REQUIRED, "alpha": 0.0,
                "warmup_target": None, "warmup_steps": 0}

    def _decay(self, step, decay_steps, start):
        cosine = _F(0.5) * (_F(1) + np.cos(_F(math.pi) * (step / decay_steps)))
        alpha = self.config["alpha"]
        return start * (_F(1 - alpha) * cosine + _F(alpha))

    def __call__(self, step):
        c = self.config
        initial, decay_steps, step = _F(c["initial_learning_rate"]), _F(c["decay_steps"]), _F(step)
        if c["warmup_target"] is None:
            return self._decay(min(step, decay_steps), decay_steps, initial)
        target, warmup = _F(c["warmup_target"]), _F(c["warmup_steps"])
        step = min(step, decay_steps + warmup)
        if step < warmup:
            return (target - initial) * (step / warmup) + initial
        return self._decay(step - warmup, decay_steps, target)


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay,
                                           PolynomialDecay, CosineDecay)}


def get(spec):
    """A schedule from a graph training record's {'class_name', 'config'}."""
    name = spec.get("class_name") if isinstance(spec, dict) else None
    cls = SCHEDULES.get(name)
    if cls is None or not isinstance(spec.get("config"), dict):
        raise InputDataError(f"learning-rate schedule {str(name)[:100]!r} is not supported (supported: "
                             f"{', '.join(SCHEDULES)}); pass learning_rate=<number> (ktrain --learning-rate)")
    return cls(**spec["config"])
