"""trajdistill: distil reasoning into language models from trajectories.

The Python API (`trajdistill.api`):

    import trajdistill

    result = trajdistill.train("configs/demo.yaml", {"optim.steps": 2}, run_dir="runs/try")
    result.table                       # the before/after evaluation table as data
    trajdistill.evaluate("runs/try/final", "builtin:arith-mix").table

Register your own method or sampler backend in the same script and name it in the config:
`trajdistill.register_method("my-kd", MyKD)`, `trajdistill.register_sampler("my-engine", factory)`.
"""

import types as _types

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input (config, data file, CLI argument).

    The CLI prints it as one line and exits non-zero, without a traceback.
    """


class RunWarning(UserWarning):
    """Something the user should know that does not stop the command (a damaged checkpoint
    skipped, metrics lines lost). The CLI prints it as one `warning:` line."""


class _TrainPackage(_types.ModuleType):
    """`trajdistill.train` is the package of the trainer (`trajdistill.train.run`, `.loop`, ...) and,
    called, the API function `trajdistill.api.train`: a module attribute named like a subpackage
    would be replaced by the subpackage as soon as it is imported."""

    def __call__(self, *args, **kwargs):
        from trajdistill.api import train

        return train(*args, **kwargs)

    @property
    def __signature__(self):  # `inspect.signature(trajdistill.train)` is the function's
        import inspect

        from trajdistill.api import train

        return inspect.signature(train)


from trajdistill import train as _train_package  # noqa: E402  (an empty package: loads nothing)

_train_package.__class__ = _TrainPackage
if not _train_package.__doc__:
    _train_package.__doc__ = ("The trainer's package; called, `trajdistill.train(config, overrides, run_dir=...)` "
                              "runs a training job (see `trajdistill.api.train`).")

_LAZY = {
    "evaluate": ("trajdistill.api", "evaluate"),
    "EvalResult": ("trajdistill.api", "EvalResult"),
    "TrainResult": ("trajdistill.api", "TrainResult"),
    "RunConfig": ("trajdistill.config", "RunConfig"),
    "load_config": ("trajdistill.config", "load_config"),
    "register_method": ("trajdistill.methods", "register"),
    "method_names": ("trajdistill.methods", "method_names"),
    "register_sampler": ("trajdistill.rollout.sampler", "register_sampler"),
    "sampler_names": ("trajdistill.rollout.sampler", "sampler_names"),
}


def __getattr__(name):  # the API loads pydantic and the config only when first used
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'trajdistill' has no attribute {name!r}")


__all__ = ["EvalResult", "RunConfig", "RunWarning", "TrainResult", "UserError", "evaluate", "load_config",
           "method_names", "register_method", "register_sampler", "sampler_names", "train"]
