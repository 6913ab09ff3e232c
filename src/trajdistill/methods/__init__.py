"""Methods: each one module composing the stations of the data path, plus one preset in configs/.

The registry below is the only place a method's name lives. Register your own method from your
package without editing this one:

    from trajdistill.methods import register
    register("my-kd", MyKD)            # MyKD subclasses trajdistill.methods.base.Method

or declare it as an entry point, which trajdistill loads when the name is first asked for:

    [project.entry-points."trajdistill.methods"]
    my-kd = "my_package.my_kd:MyKD"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from trajdistill.methods.base import Method, MethodContext, MethodOptions, StepResult

ENTRY_POINT_GROUP = "trajdistill.methods"

# Built in: name -> "module:Class", imported on first use so a method's optional pieces load only
# when it runs.
_BUILTIN: dict[str, str] = {
    "opd": "trajdistill.methods.onpolicy:OPD",
    "opsd": "trajdistill.methods.onpolicy:OPSD",
    "trd": "trajdistill.methods.trd:TrajectoryRefinedDistillation",
    "renio": "trajdistill.methods.renio:ReNIO",
    "topd": "trajdistill.methods.topd:TOPD",
    "sft": "trajdistill.methods.offline:SFT",
    "redi": "trajdistill.methods.offline:REDI",
    "dpo": "trajdistill.methods.offline:DPO",
    "simpo": "trajdistill.methods.offline:SimPO",
}
_REGISTERED: dict[str, type[Method]] = {}


def register(name: str, cls: type[Method]) -> type[Method]:
    """Make `method: NAME` run `cls`; its config section is the YAML section `NAME:`."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"method {name!r}: {cls!r} is not a subclass of trajdistill.methods.base.Method")
    _REGISTERED[name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def method_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def method_class(name: str) -> type[Method]:
    """The class registered as `name`; ValueError listing the choices for an unknown name."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        raise ValueError(f"unknown method '{name}' (choose one of: {', '.join(method_names())})")
    module, _, attr = target.partition(":")
    return register(name, getattr(importlib.import_module(module), attr))


__all__ = ["Method", "MethodContext", "MethodOptions", "StepResult", "method_class", "method_names",
           "register", "unregister"]
