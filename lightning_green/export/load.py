"""Rebuild a trained (pruned) model from a Lightning checkpoint, and find its inputs, for export and benchmarks.

A module is named by class (an import path such as ``lightning_green.demos.DigitsCNN``, a demo's short name, or the
class itself); its constructor arguments come from a LightningCLI config (``model.init_args``) or else from the
hyperparameters the checkpoint saved (``save_hyperparameters``). A checkpoint written while
:class:`~lightning_green.StructuredPruning` was active is rebuilt with its pruning history
(:func:`~lightning_green.pruning.rebuild_from_checkpoint`), so the result has the pruned shapes.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_green._internal.validation import InvalidArgumentError, InvalidArgumentTypeError
from lightning_green.energy.report import is_energy_report

__all__ = [
    "cannot_create_in",
    "check_output_path",
    "example_inputs_of",
    "first_batch_input",
    "load_checkpoint_module",
    "resolve_class",
]


def resolve_class(owner: str, name: str, value: str | type) -> type:
    """The class ``value`` names: an import path (``pkg.mod.Class``) or the short name of a built-in demo."""
    if isinstance(value, type):
        return value
    if not isinstance(value, str) or not value:
        raise InvalidArgumentTypeError(f"{owner}({name}={value!r}): `{name}` must be a class or its import path.")
    if "." not in value:
        import lightning_green.demos as demos

        cls = getattr(demos, value, None)
        if isinstance(cls, type):
            return cls
        raise InvalidArgumentError(
            f"{owner}({name}={value!r}): `{name}` must be an import path like 'package.module.Class' or one of the "
            f"demos {tuple(demos.__all__)!r}."
        )
    mod_name, _, cls_name = value.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise InvalidArgumentError(
            f"{owner}({name}={value!r}): `{name}` must be an importable class path ({type(err).__name__}: {err})."
        ) from None
    if not isinstance(cls, type):
        raise InvalidArgumentError(f"{owner}({name}={value!r}): `{name}` must name a class, not {type(cls).__name__}.")
    return cls


def saved_run_config(ckpt_path: str | os.PathLike, name: str = "config.yaml") -> Path | None:
    """The config LightningCLI saved with the run ``ckpt_path`` belongs to, or ``None``.

    LightningCLI writes ``<log_dir>/config.yaml`` and Lightning the checkpoints to ``<log_dir>/checkpoints/``: the
    nearest ``config.yaml`` up to three folders above the checkpoint whose ``model`` section names a class
    (``class_path``) is taken; another ``config.yaml`` (a project's own settings), or one naming another class than
    the one LightningCLI recorded in the checkpoint (``hyper_parameters._class_path``), is passed over. Its model
    arguments may differ from those the checkpoint recorded (a later fit into the same folder replaced it, or the run
    changed them: ``LearningRateFinder`` sets ``lr``): the checkpoint's win (see :func:`recorded_differences`).
    """
    expected = _checkpoint_hparams(ckpt_path).get("_class_path")
    for path in run_configs_near(ckpt_path, name):
        names, _ = _section_args(_read_config("saved_run_config", path).get("model"))
        if not isinstance(expected, str) or names == expected:
            return path
    return None


def recorded_differences(ckpt_path: str | os.PathLike, config: str | os.PathLike | Mapping[str, Any]) -> str | None:
    """The model arguments ``config`` gives otherwise than LightningCLI recorded them in the checkpoint, or ``None``.

    A module built from a LightningCLI config for a checkpoint LightningCLI wrote takes the checkpoint's recorded
    arguments where the two differ (:func:`load_checkpoint_module`): they are what its weights were trained with.
    """
    try:
        cfg_class, init_args = _section_args(_read_config("recorded_differences", config).get("model"))
    except (InvalidArgumentError, OSError, UnicodeDecodeError):
        return None
    recorded = _recorded_arguments(_checkpoint_hparams(ckpt_path), cfg_class)
    return None if recorded is None else _other_arguments(recorded, init_args)


def _recorded_arguments(saved: Mapping[str, Any], cls: str | type | None) -> dict[str, Any] | None:
    """The model arguments LightningCLI recorded in a checkpoint (``saved``: its hyperparameters) for class ``cls``.

    ``None`` unless LightningCLI recorded them (``_class_path``) for that very class (a short name such as
    ``DigitsCNN`` and its import path are one class).
    """
    recorded = saved.get("_class_path")
    if not isinstance(recorded, str) or cls is None:
        return None
    try:
        same = resolve_class("load", "module", recorded) is resolve_class("load", "module", cls)
    except (InvalidArgumentError, InvalidArgumentTypeError):
        same = recorded == cls
    return {k: v for k, v in saved.items() if k[:1] != "_"} if same else None


def run_configs_near(ckpt_path: str | os.PathLike, name: str = "config.yaml") -> list[Path]:
    """Every ``config.yaml`` up to three folders above the checkpoint whose ``model`` section names a class.

    The run's own config (or a later run's into the same folder), or one naming another model class: each is a run's
    record, which a command's output must not replace.
    """
    found, p = [], Path(ckpt_path).resolve().parent
    for _ in range(3):
        path = p / name
        if path.is_file():
            try:
                data = _read_config("run_configs_near", path)
            except (InvalidArgumentError, OSError, UnicodeDecodeError):
                data = {}
            if isinstance(_section_args(data.get("model"))[0], str):
                found.append(path)
        p = p.parent
    return found


def _other_arguments(saved: Mapping[str, Any], init_args: Mapping[str, Any]) -> str | None:
    """The model arguments a run's config gives otherwise than the checkpoint recorded them (``saved``; ``None``: none).

    LightningCLI records the run's ``model.init_args`` as the checkpoint's hyperparameters (as they are when the
    checkpoint is saved): a config that differs there was written by another run (``save_config_kwargs={"overwrite":
    True}`` with the same log dir), or the run changed them.
    """
    differ = [k for k, v in saved.items() if k in init_args and init_args[k] != v]
    if not differ:
        return None
    shown = ", ".join(f"{k}={saved[k]!r} (config: {init_args[k]!r})" for k in differ[:3])
    return f"{shown}{' and more' if len(differ) > 3 else ''}"


def _checkpoint_hparams(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """The hyperparameters a checkpoint saved (LightningCLI's include ``_class_path``); ``{}`` if unreadable.

    The checkpoint is memory-mapped: its weights are not read.
    """
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    return dict(hparams) if isinstance(hparams, Mapping) else {}


def _has_class_path(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "class_path" in value or any(_has_class_path(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_class_path(v) for v in value)
    return False


def _build_from_config(owner: str, cls: type, kwargs: dict[str, Any]) -> Any:
    """``cls`` built from a LightningCLI config's ``init_args`` as LightningCLI built it in training.

    jsonargparse reads them against ``cls``'s signature: a network passed as an argument (``class_path``/
    ``init_args``) is built, an optimizer typed as a callable becomes one, a ``dict``-typed value stays a dict. Plain
    values that jsonargparse cannot validate (a config written by hand) are passed to the constructor as they are.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, "model", fail_untyped=False, sub_configs=True)
        cfg = parser.parse_object({"model": kwargs})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # 4.49 renamed it
        return instantiate(cfg).model
    except Exception as err:
        if _has_class_path(kwargs):
            why = " ".join(str(err).split()) or type(err).__name__
            raise InvalidArgumentError(
                f"{owner}(module={cls.__name__}): building it from the config's model init_args failed: {why}"
            ) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"{owner}(module={cls.__name__}): building it with {kwargs!r} failed: {str(err).splitlines()[0]}"
        ) from None


def _read_config(owner: str, config: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if not path.is_file():
        raise InvalidArgumentError(f"{owner}(config={os.fspath(config)!r}): `config` must be an existing YAML file.")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InvalidArgumentError(
            f"{owner}(config={os.fspath(config)!r}): `config` must be valid YAML ({str(err).splitlines()[0]})."
        ) from None
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"{owner}(config={os.fspath(config)!r}): `config` must hold a YAML mapping.")
    return dict(data)


def _section_args(section: Any) -> tuple[str | None, dict[str, Any]]:
    """(class_path, init_args) of a LightningCLI ``model:``/``data:`` section (either form)."""
    if not isinstance(section, Mapping):
        return None, {}
    if "class_path" in section or "init_args" in section:
        return section.get("class_path"), dict(section.get("init_args") or {})
    return None, dict(section)


def _accepted(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``kwargs`` that ``cls.__init__`` accepts (all of them when it takes ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {k: v for k, v in kwargs.items() if not k.startswith("_")}
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}


def _load_checkpoint(owner: str, ckpt_path: str | os.PathLike, map_location: Any, arg: str = "ckpt") -> dict[str, Any]:
    path = Path(ckpt_path)
    if not path.is_file():
        raise InvalidArgumentError(
            f"{owner}({arg}={os.fspath(ckpt_path)!r}): `{arg}` must be an existing checkpoint file."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # not a torch file, or one that needs pickled classes: say so, on one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
            why = f"it holds objects weights_only=True does not load: {first[:200]}"
        else:  # torch's own words for a truncated or foreign file are a bare errno or number
            why = f"not a complete torch checkpoint (truncated, or another kind of file): {type(err).__name__}"
            why += f": {first[:200]}" if first else ""
        raise InvalidArgumentError(
            f"{owner}({arg}={os.fspath(ckpt_path)!r}): `{arg}` must be a Lightning checkpoint readable with "
            f"weights_only=True; {why}."
        ) from None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict", ckpt), Mapping):
        raise InvalidArgumentError(f"{owner}({arg}={os.fspath(ckpt_path)!r}): `{arg}` must hold a `state_dict`.")
    return dict(ckpt)


def _mismatch(module: nn.Module, weights: Mapping[str, Any]) -> str:
    """What differs between ``module``'s state and ``weights`` (empty when they match)."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("other shapes (checkpoint vs module)", shapes),
    ):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def load_checkpoint_module(
    ckpt_path: str | os.PathLike,
    module: str | type | nn.Module | None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
    owner: str = "load_checkpoint_module",
    ckpt_arg: str = "ckpt",
) -> nn.Module:
    """Build ``module`` (dense, as its constructor does), cut it to the checkpoint's pruned shapes, load the weights.

    Args:
        ckpt_path: A Lightning checkpoint (``weights_only`` loadable), pruned or not.
        module: The module's class, its import path (or a demo's short name), or an instance built as in training.
        config: A LightningCLI YAML (or its dict) whose ``model`` section gives the constructor arguments; without
            it (no config, or one without a ``model`` section), the hyperparameters the checkpoint saved are used.
            With neither ``module`` nor ``config``, the ``config.yaml`` LightningCLI saved with the run is used
            (see :func:`saved_run_config`).
        map_location: Passed to ``torch.load``.
        owner: Who is asking, for error messages.
        ckpt_arg: The name error messages give the checkpoint (e.g. ``"against"`` for a baseline).

    Returns:
        The module in eval mode, with the checkpoint's architecture and weights.

    Raises:
        ValueError: The checkpoint is missing or unreadable, or does not match the module (the message lists the
            missing/unexpected keys and shape differences, and how to fix it).

    Example:
        >>> import tempfile, pathlib
        >>> from lightning_green.demos import DigitsCNN
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.ckpt"
        >>> torch.save({"state_dict": DigitsCNN(channels=[8]).state_dict(), "hyper_parameters": {"channels": [8]}},
        ...            path)
        >>> load_checkpoint_module(path, "DigitsCNN").classifier.in_features
        8
    """
    ckpt = _load_checkpoint(owner, ckpt_path, map_location, ckpt_arg)
    if module is None and config is None:  # a LightningCLI run: the config it saved names the class
        config = saved_run_config(ckpt_path)
    cfg = _read_config(owner, config)
    if isinstance(module, nn.Module):
        model = module
    else:
        cfg_class, init_args = _section_args(cfg.get("model"))
        recorded = (ckpt.get("hyper_parameters") or {}).get("_class_path")
        if module is None and not cfg_class and isinstance(recorded, str):
            module = recorded  # LightningCLI recorded the class in the checkpoint: build it with the saved arguments
        if module is None and not cfg_class:
            raise InvalidArgumentError(
                f"{owner}(module=None): `module` must be given (a LightningModule class or its import path), or a "
                f"`config` whose model section names one, for `{ckpt_arg}` {os.fspath(ckpt_path)!r}: no config.yaml "
                f"saved by LightningCLI lies up to three folders above it."
            )
        cls = resolve_class(owner, "module", module if module is not None else cfg_class)
        # A config without a `model` section (e.g. only `data:`) says nothing of the constructor: the saved
        # hyperparameters do.
        has_model = isinstance(cfg.get("model"), Mapping)
        saved = dict(ckpt.get("hyper_parameters") or {})
        if has_model:
            # LightningCLI recorded the arguments this checkpoint was trained with: they win where the config differs
            # (another run's config.yaml; a tuner's lr). Those it left out (save_hyperparameters(ignore=)) come from
            # the config.
            init_args = {**init_args, **(_recorded_arguments(saved, cls) or {})}
            model = _build_from_config(owner, cls, _accepted(cls, init_args))
        elif isinstance(saved.get("_class_path"), str):  # LightningCLI saved the arguments in their config form
            model = _build_from_config(owner, cls, _accepted(cls, {k: v for k, v in saved.items() if k[:1] != "_"}))
        else:
            kwargs = saved
            try:
                model = cls(**_accepted(cls, kwargs))
            except (TypeError, ValueError) as err:
                raise InvalidArgumentError(
                    f"{owner}(module={cls.__name__}): building it with {kwargs!r} failed: {str(err).splitlines()[0]}"
                ) from None
    weights = ckpt.get("state_dict", ckpt)
    name = type(model).__name__
    given = f"{owner}({ckpt_arg}={os.fspath(ckpt_path)!r}): `{ckpt_arg}`"
    from lightning_green.pruning.history import rebuild_from_checkpoint

    try:
        rebuild_from_checkpoint(model, ckpt, owner=owner)
    except Exception as err:  # replaying a history recorded on another architecture fails anywhere in the replay
        why = str(err).split(": ", 1)[-1] if isinstance(err, ValueError) else f"replaying its pruning history: {err!r}"
        raise InvalidArgumentError(
            f"{given} does not match {name}: {_mismatch(model, weights)} ({' '.join(why.split())})"
        ) from None
    diff = _mismatch(model, weights)
    if diff:
        raise InvalidArgumentError(
            f"{given} must be a checkpoint of {name} as built here; {diff}. "
            "Pass the module class and config (or hyperparameters) used in training."
        )
    model.load_state_dict(weights, strict=True)
    return model.eval()


def example_inputs_of(owner: str, model: nn.Module, example_inputs: Any = None) -> tuple[torch.Tensor, ...]:
    """The model's example input as a tuple of tensors (``example_input_array`` unless given).

    Raises:
        ValueError: There is none, or it is not a tensor or a tuple/list of tensors.
    """
    x = example_inputs if example_inputs is not None else getattr(model, "example_input_array", None)
    if x is None:
        raise InvalidArgumentError(
            f"{owner}(example_inputs=None): `example_inputs` must be given when {type(model).__name__} has no "
            "`example_input_array`."
        )
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(x)
    raise InvalidArgumentError(
        f"{owner}(example_inputs={type(x).__name__}): `example_inputs` must be a tensor or a tuple of tensors "
        "(positional forward arguments with the batch on dim 0)."
    )


def first_batch_input(batch: Any, n_inputs: int = 1) -> tuple[torch.Tensor, ...] | None:
    """The model input of a dataloader batch: its first ``n_inputs`` items, or ``None`` when they are not tensors.

    A tensor batch is the input itself (one input); a tuple/list gives its first ``n_inputs`` items (``(x, y)`` → ``x``,
    ``(x1, x2, label)`` → ``(x1, x2)`` for a two-input forward); a dict gives ``input_ids`` (or its first tensor).

    Example:
        >>> x1, x2, label = torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2)
        >>> [t.shape[1] for t in first_batch_input((x1, x2, label), n_inputs=2)]
        [4, 3]
    """
    if isinstance(batch, torch.Tensor):
        return (batch,) if n_inputs == 1 else None
    if isinstance(batch, (tuple, list)):
        items = tuple(batch[:n_inputs])
        return items if len(items) == n_inputs and all(isinstance(t, torch.Tensor) for t in items) else None
    if isinstance(batch, Mapping) and n_inputs == 1:
        x = batch.get("input_ids", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
        return (x,) if isinstance(x, torch.Tensor) else None
    return None


def check_output_path(
    owner: str,
    out: str | os.PathLike,
    name: str = "out",
    kind: Literal["file", "dir"] = "file",
    keep: Sequence[tuple[str | os.PathLike | None, str]] = (),
    sidecars: Sequence[str] = (),
) -> Path:
    """``out`` as a Path to write a ``kind`` (``"file"`` or ``"dir"``) at, checked before any work is done.

    Its parent directory must exist (a missing directory is an error, not created silently) and take a new file; an
    existing ``out`` must be of the same kind (a file is not written over a directory, nor a folder over a file). A
    file is never written over a file the command reads or updates, nor over a lightning-green energy report (a
    run's measured training energy, which nothing can write again).

    Args:
        owner: Who is asking, for error messages.
        out: The path to check.
        name: The argument's name, for error messages.
        kind: What is written there: a ``"file"`` or a ``"dir"``.
        keep: ``(path, what it is)`` of files that must not be written over, e.g. ``(ckpt, "`ckpt`, the checkpoint
            being read")``; a ``None`` path is skipped.
        sidecars: Suffixes of files written beside ``out`` (ONNX's ``".data"`` weights), checked as ``out`` is.

    Raises:
        ValueError: ``out`` is in a missing or unwritable directory, exists as the other kind, or it (or a sidecar)
            is one of ``keep`` or an existing energy report.
    """
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise InvalidArgumentTypeError(f"{owner}({name}={out!r}): `{name}` must be a file path.")
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    prefix = f"{owner}({name}={os.fspath(out)!r}): `{name}`"
    if not parent.is_dir():
        raise InvalidArgumentError(
            f"{prefix} must be in an existing directory; {os.fspath(parent)!r} does not exist (create it first)."
        )
    if kind == "file" and path.is_dir():
        raise InvalidArgumentError(f"{prefix} must be a file path; it is an existing directory.")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise InvalidArgumentError(
            f"{prefix} must be a folder path (the format writes a folder); it is an existing file."
        )
    for written in [path] * (kind == "file") + [Path(f"{path}{s}") for s in sidecars]:
        via = "" if written == path else f" (it writes {os.fspath(written)!r} beside it)"
        for value, what in keep:
            if value is not None and _same_file(written, value):
                raise InvalidArgumentError(
                    f"{prefix} must be another file than {what} ({os.fspath(value)!r}){via}: writing it would "
                    "replace that file."
                )
        if is_energy_report(written):
            raise InvalidArgumentError(
                f"{prefix} must not be an existing lightning-green energy report{via}: the file holds a run's "
                "measured energy, which writing it would replace; pass another path."
            )
    where = path if path.is_dir() else parent
    err = cannot_create_in(where)
    if err is not None:
        raise InvalidArgumentError(
            f"{prefix} must be in a directory you can write to; creating a file in {os.fspath(where)!r} failed ({err})."
        )
    if kind == "file" and path.exists() and not os.access(path, os.W_OK):
        raise InvalidArgumentError(f"{prefix} must be writable; the existing file is read-only.")
    return path


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    """Whether paths ``a`` and ``b`` name one file (through links too; by resolved path when one is missing)."""
    try:
        if a.exists() and os.path.exists(b):
            return os.path.samefile(a, b)
        return a.resolve() == Path(b).resolve()
    except (OSError, RuntimeError):  # an unreadable path or a symlink loop: compare as written
        return os.path.abspath(a) == os.path.abspath(b)


#: Files larger than this are not read to tell whether they are energy reports (those are a few kB to a few MB).
def cannot_create_in(directory: str | os.PathLike) -> str | None:
    """Why no new file can be created in ``directory`` (``"PermissionError: ..."``), or ``None`` when one can.

    Permission bits do not tell (root, read-only mounts, ACLs): creating (and at once removing) a file there does.
    """
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".lightning-green-"):
            return None
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
