"""One typed configuration tree for every command; a preset in `configs/` is a YAML file of it.

The shared sections are declared (and documented) in `config_sections`; this module holds the root,
`RunConfig`, and its loading: unknown keys are errors (a typo must not silently fall back to a
default), and a method's own section is validated by the method's `Options`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import Field, PrivateAttr, ValidationError

from trajdistill import UserError
from trajdistill.config_sections import (
    CheckpointSpec,
    DataSpec,
    DistributedSpec,
    EvalSpec,
    LoggingSpec,
    LoraSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    PromptSpec,
    SamplingSpec,
    Section,
    SpeedSpec,
    TracesSpec,
    VLLMSpec,
)
from trajdistill.files import atomic_write_text

__all__ = [
    "CheckpointSpec", "DataSpec", "DistributedSpec", "EvalSpec", "LoggingSpec", "LoraSpec", "LossSpec",
    "ModelSpec", "OptimSpec", "PromptSpec", "RunConfig", "SamplingSpec", "Section", "SpeedSpec", "TracesSpec",
    "VLLMSpec", "apply_overrides", "check_for_training", "config_from_tree", "format_validation_error",
    "import_plugins", "load_config", "read_yaml_tree", "save_config", "set_dotted",
]


# Top-level keys that used to be flat options and now live in the section of the methods using them.
_MOVED = {
    "setting": "the trd, renio and topd sections (opd and opsd name their setting)",
    "off_policy_fraction": "the on-policy method's section (e.g. opsd.off_policy_fraction)",
    "off_policy_source": "the on-policy method's section (e.g. opsd.off_policy_source)",
    "outcome_filter": "the on-policy method's section (e.g. renio.outcome_filter)",
    "drop_truncated": "the on-policy method's section (e.g. opsd.drop_truncated)",
    "diagnostics": "the on-policy method's section (e.g. opsd.diagnostics)",
    "offline": "the offline method's own section (sft:, redi:, dpo:, simpo:); offline.context is traces.context",
}

# The speed switches, once under `loss:` and `model:` (and so `teacher:`), now all in `speed:`.
SPEED_MOVED = {"loss": ("share_prefix", "bucketing", "bucket_cost"), "model": ("packed_linear",),
               "teacher": ("packed_linear",)}
_SPEED_ONLY_LOSS = ("share_prefix", "bucketing", "bucket_cost")  # the distillation loss's forwards


class RunConfig(Section):
    plugins: list[str] = Field(default_factory=list)
    """Modules imported before the rest of the config is validated (`my_package.my_kd`, or a path to
    a `.py` file), so that the methods, sampler backends and verifiers they register can be named
    here. The CLI's `--plugin` adds to it."""
    method: str = "opsd"
    """A registered method: one of `trajdistill.methods.method_names()` (the built-in ones and any
    registered from a plugin or an entry point). Its options are the YAML section named after it
    (`opsd: {off_policy_fraction: 0.5}`), validated by the method's `Options`."""
    seed: int = 0
    output_dir: str = "runs/run"
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: ModelSpec | None = None
    """The separate teacher of OPD-setting methods; refused where the method does not use one."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    traces: TracesSpec = Field(default_factory=TracesSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    _options: Any = PrivateAttr(default=None)

    @property
    def method_class(self):
        from trajdistill.methods import method_class

        return method_class(self.method)

    @property
    def options(self):
        """The chosen method's own section (an instance of its `Options`)."""
        if self._options is None:
            self._options = self.method_class.Options()
        return self._options

    def tree(self) -> dict[str, Any]:
        """The YAML tree that `load_config` reads back into this config."""
        out = self.model_dump(mode="json")
        if not out["plugins"]:  # a config without plugins reads as before they existed
            del out["plugins"]
        out[self.method] = self.options.model_dump(mode="json")
        if not self.method_class.uses_loss_section:  # its other loss fields are refused on load
            out["loss"] = {"chunk_size": out["loss"]["chunk_size"]}
        return out


def config_from_tree(tree: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a whole tree: the method first (before anything is loaded), then the shared
    sections, then the method's own section and the method's cross-field checks."""
    from trajdistill.methods import method_class, method_names

    tree = dict(tree)
    if tree.get("plugins") is not None:
        plugins = tree["plugins"]
        if not (isinstance(plugins, list) and all(isinstance(p, str) for p in plugins)):
            raise UserError(f"{source}: field 'plugins': expected a list of module names, got {plugins!r}")
        import_plugins(plugins, source)
    method = tree.get("method", RunConfig.model_fields["method"].default)
    if not isinstance(method, str):
        raise UserError(f"{source}: field 'method': expected a method name, got {method!r}")
    try:
        cls = method_class(method)
    except ValueError as err:
        raise UserError(f"{source}: field 'method': {err}") from None
    section = tree.pop(method, None)
    names = set(method_names())
    for key in tree:
        if key in names:
            raise UserError(f"{source}: field '{key}': method {method} does not use the `{key}` section "
                            f"(it holds the options of method {key})")
        if key in _MOVED:
            raise UserError(f"{source}: field '{key}': not a top-level option; it belongs in {_MOVED[key]}")
    for where, names in SPEED_MOVED.items():
        node = tree.get(where)
        for name in names:
            if isinstance(node, dict) and name in node:
                raise UserError(f"{source}: field '{where}.{name}' moved to 'speed.{name}'")
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None
    if section is not None and not isinstance(section, dict):
        raise UserError(f"{source}: field '{method}': the method's section must be a mapping")
    try:
        cfg._options = cls.Options.model_validate(section or {})
    except ValidationError as err:
        raise UserError(format_validation_error(err, source, prefix=method)) from None
    try:
        _check_method_fields(cfg, cls, tree)
        cls.check_config(cfg)
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None
    return cfg


def _check_method_fields(cfg: RunConfig, cls, tree: dict[str, Any]) -> None:
    for field in ("autocast", "gradient_checkpointing"):
        if cfg.teacher is not None and cfg.teacher.explicitly_set(field):  # a saved config writes defaults
            raise ValueError(f"field 'teacher.{field}': set model.{field}; the teacher follows the "
                             "student's precision policy and is never trained")
    kind = cls.teacher_kind(cfg.options)
    if kind == "separate" and cfg.teacher is None:
        raise ValueError(f"field 'teacher': method {cfg.method} in the opd setting needs a `teacher` model")
    if kind != "separate" and cfg.teacher is not None:
        what = "no teacher" if kind == "none" else "the student's own base weights as its teacher"
        raise ValueError(f"field 'teacher': method {cfg.method} uses {what}; remove `teacher` "
                         "(or choose the opd setting)")
    if not cls.uses_loss_section:
        used = sorted(set(tree.get("loss") or {}) - {"chunk_size"})
        if used:
            raise ValueError(f"field 'loss.{used[0]}': method {cfg.method} does not use it "
                             "(only loss.chunk_size applies to sequence objectives)")
        for name in _SPEED_ONLY_LOSS:
            if cfg.speed.explicitly_set(name):
                raise ValueError(f"field 'speed.{name}': method {cfg.method} does not use it (it applies to "
                                 "the distillation loss's student and teacher forwards)")


def move_speed_fields(tree: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config from before the `speed:` section, with its speed switches moved there
    (what `--resume` reads); a config a user writes is refused instead."""
    tree = dict(tree)
    speed = dict(tree.get("speed") or {})
    for section, names in SPEED_MOVED.items():
        if isinstance(tree.get(section), dict):
            node = tree[section] = dict(tree[section])
            for name in names:
                if name in node:
                    value = node.pop(name)
                    if section != "teacher":  # the teacher always followed model.packed_linear
                        speed.setdefault(name, value)
    if speed:
        tree["speed"] = speed
    return tree


def import_plugins(names: Iterable[str], source: str = "config") -> None:
    """Import each plugin: a module name (`my_package.my_kd`, importable from `sys.path`) or the
    path of a `.py` file. A module registers its methods, sampler backends or verifiers when
    imported; importing one twice does nothing more."""
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if not path.is_file():
                    raise ImportError(f"no such file {name}")
                module = f"trajdistill_plugin_{path.stem}_{abs(hash(str(path))):x}"
                if module not in sys.modules:
                    spec = importlib.util.spec_from_file_location(module, path)
                    sys.modules[module] = importlib.util.module_from_spec(spec)
                    try:
                        spec.loader.exec_module(sys.modules[module])
                    except BaseException:
                        del sys.modules[module]
                        raise
            else:
                importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"{source}: field 'plugins': cannot import plugin '{name}': {err}") from None


# A validator of a section that names one of its fields ("field 'top_k': ...") reports it under the
# section's path: "field 'loss.top_k': ...".
_NAMED = re.compile(r"^(?:Value error, )?field '([^']+)': (.*)$", re.S)


def format_validation_error(err: ValidationError, source: str, prefix: str | None = None) -> str:
    first = err.errors()[0]
    loc, msg = tuple(first["loc"]), first["msg"]
    named = _NAMED.match(msg) if first["type"] == "value_error" else None
    if named:
        loc, msg = loc + (named.group(1),), named.group(2)
    elif first["type"] == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: field '{where}': {msg}{more}"


def check_for_training(cfg: RunConfig, source: str = "config") -> None:
    """What training refuses on top of the config's own checks: options that only other commands
    read. A method that samples nothing during training (`needs_sampler` False: sft, redi, dpo,
    simpo) leaves `sampling.n` to `trajdistill traces generate`."""
    if not cfg.method_class.needs_sampler and cfg.sampling.explicitly_set("n"):
        raise UserError(f"{source}: field 'sampling.n': method {cfg.method} samples nothing during training "
                        f"(it trains on {cfg.method}.dataset); sampling.n applies only to `trajdistill traces "
                        "generate`: leave it out of the training config")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one `a.b.c=value` override to a nested dict."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml_tree(path: Path, _seen: tuple = ()) -> dict[str, Any]:
    """Read one preset; a top-level `base: other.yaml` (relative to the file) is merged under it."""
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    if path.resolve() in _seen:
        raise UserError(f"{path}: `base` chain loops back on itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} invalid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a config must be a mapping of sections")
    base = tree.pop("base", None)
    if base is not None:
        inherited = read_yaml_tree(path.parent / str(base), _seen + (path.resolve(),))
        if "method" in tree and inherited.get("method") != tree["method"]:
            # A preset that changes the method does not inherit the base method's own options.
            inherited.pop(str(inherited.get("method")), None)
        tree = _deep_merge(inherited, tree)
    return tree


def apply_overrides(tree: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Apply `key.sub=value` strings (values read as YAML) or a {"key.sub": value} mapping to `tree`."""
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            set_dotted(tree, str(key).strip(), value)
        return tree
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None, *,
                plugins: list[str] | None = None) -> RunConfig:
    """Read a YAML preset (or the defaults) and apply `key.sub=value` overrides; `plugins` are
    imported first and added to the config's `plugins` list."""
    tree: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        tree = read_yaml_tree(Path(path))
    apply_overrides(tree, overrides)
    if plugins:
        listed = tree.get("plugins") if isinstance(tree.get("plugins"), list) else []
        tree["plugins"] = list(dict.fromkeys([*listed, *plugins]))
    return config_from_tree(tree, source)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.tree(), sort_keys=False))
