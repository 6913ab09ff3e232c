"""Methods: each one file composing the stations of the data path, plus one preset in configs/.

Add a method by writing a module with a class taking a `MethodContext` and registering it here.
"""

from __future__ import annotations

import importlib

from trajdistill import UserError

# method name -> (module, class). Imported lazily so a method's optional pieces load only when used.
REGISTRY: dict[str, tuple[str, str]] = {
    "opd": ("trajdistill.methods.onpolicy", "OnPolicyDistillation"),
    "opsd": ("trajdistill.methods.onpolicy", "OnPolicyDistillation"),
    "trd": ("trajdistill.methods.trd", "TrajectoryRefinedDistillation"),
    "renio": ("trajdistill.methods.renio", "ReNIO"),
    "topd": ("trajdistill.methods.topd", "TOPD"),
    "sft": ("trajdistill.methods.offline", "SFT"),
    "redi": ("trajdistill.methods.offline", "REDI"),
    "dpo": ("trajdistill.methods.offline", "DPO"),
    "simpo": ("trajdistill.methods.offline", "SimPO"),
}

ON_POLICY = {"opd", "opsd", "trd", "renio", "topd"}


def method_class(name: str):
    if name not in REGISTRY:
        raise UserError(f"unknown method '{name}' (choose one of: {', '.join(sorted(REGISTRY))})")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)
