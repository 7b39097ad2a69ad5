"""Training methods: each wraps one TRL trainer behind `Method.train(policy, reference, data, settings)`."""

from .base import Method, MethodSettings, TrainedPolicy, TrainResult, build_method

__all__ = ["Method", "MethodSettings", "TrainResult", "TrainedPolicy", "build_method"]
