"""Checkpoint in, checked export out: :func:`export_checkpoint`, and the datamodule batch it checks on."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_green._internal.validation import InvalidArgumentError, check_choice
from lightning_green.export.formats import FORMATS, ExportResult, Format, _shapes, check_export_out, export_model
from lightning_green.export.load import (
    _read_config,
    _section_args,
    example_inputs_of,
    first_batch_input,
    load_checkpoint_module,
    resolve_class,
    run_configs_near,
    saved_run_config,
)

__all__ = ["build_datamodule", "datamodule_batch", "export_checkpoint", "inputs_read"]


def build_datamodule(
    data: str | type | Any | None, config: str | os.PathLike | Mapping[str, Any] | None, owner: str
) -> Any | None:
    """The datamodule named by ``data`` (class, path or instance) or the config's ``data`` section, else ``None``."""
    cfg = _read_config(owner, config)
    cfg_class, init_args = _section_args(cfg.get("data"))
    if data is None and cfg_class is None:
        return None
    if data is not None and not isinstance(data, (str, type)):
        return data
    cls = resolve_class(owner, "data", data if data is not None else cfg_class)
    if data is not None and not _names(owner, cfg_class, cls):
        init_args = {}  # the config's arguments are another datamodule's
    try:
        return cls(**init_args)
    except Exception as err:
        raise InvalidArgumentError(
            f"{owner}(data={cls.__name__}): building it with {init_args!r} failed: {str(err).splitlines()[0]}"
        ) from None


def _names(owner: str, class_path: str | None, cls: type) -> bool:
    """Whether ``class_path`` (a config's) names ``cls``."""
    if class_path is None:
        return False
    try:
        return resolve_class(owner, "data", class_path) is cls
    except Exception:
        return False


def _serves(datamodule: Any, loader: str) -> bool:
    """Whether ``datamodule`` has its own ``loader`` (a LightningDataModule's defaults only raise)."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if isinstance(datamodule, pl.LightningDataModule):
        return is_overridden(loader, datamodule, pl.LightningDataModule)
    return callable(getattr(datamodule, loader, None))


def data_sample(example: tuple[torch.Tensor, ...], batch: tuple[torch.Tensor, ...] | None) -> Any:
    """The batch's first sample where the data differs from the module's example input beyond the batch size.

    A run on 8x8 digits of a module whose ``example_input_array`` is 24x24: exports and benchmarks take the run's
    own input. ``None`` where the shapes agree (or there is no batch).

    Example:
        >>> data_sample((torch.zeros(1, 1, 24, 24),), (torch.ones(64, 1, 8, 8),))[0].shape
        torch.Size([1, 1, 8, 8])
        >>> data_sample((torch.zeros(1, 1, 8, 8),), (torch.ones(64, 1, 8, 8),)) is None
        True
    """
    if batch is None or [t.shape[1:] for t in example] == [t.shape[1:] for t in batch]:
        return None
    return tuple(t[:1] for t in batch)


def check_data_inputs(
    owner: str,
    datamodule: Any,
    example: tuple[torch.Tensor, ...],
    batch: tuple[torch.Tensor, ...],
    model: nn.Module | None = None,
) -> None:
    """Refuse a datamodule batch that cannot be the model's input (before it replaces the example in a trace).

    Fewer inputs than the example, or floats where the example has integer ids, are refused outright. A batch of
    another rank (images where the example is flat) is refused only if ``model`` fails on its first sample: a
    forward that flattens takes both.

    A wrong ``--data`` (images for a language model) was traced in place of the example and blamed on it.

    Example:
        >>> class Images: ...
        >>> check_data_inputs("export", Images(), (torch.zeros(1, 64, dtype=torch.long),), (torch.ones(64, 1, 8, 8),))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_green...InvalidArgumentError: export(data=Images): `data` must serve the model's inputs, like its ...
    """

    def described(xs: tuple[torch.Tensor, ...]) -> str:
        return ", ".join(f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}" for t in xs)

    def refuse(why: str = "") -> None:
        raise InvalidArgumentError(
            f"{owner}(data={type(datamodule).__name__}): `data` must serve the model's inputs, like its "
            f"example_input_array {described(example)}; its batch is {described(batch)}{why}."
        )

    ids_as_floats = any(
        not (e.is_floating_point() or e.is_complex()) and e.dtype != torch.bool and b.is_floating_point()
        for e, b in zip(example, batch, strict=False)
    )
    if len(batch) < len(example) or ids_as_floats:
        refuse()
    if any(e.dim() != b.dim() for e, b in zip(example, batch, strict=False)):
        if model is None:
            refuse()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            with torch.no_grad():
                model(*(t[:1].to(device) for t in batch[: len(example)]))
        except Exception as err:  # the model's own failure on the data: the data is what was named
            first = str(err).splitlines()[0][:200] if str(err) else ""
            refuse(f" (the model fails on it: {type(err).__name__}: {first})")


def sample_note(example: tuple[torch.Tensor, ...], sample: tuple[torch.Tensor, ...]) -> str:
    """``(1, 1, 8, 8): the module's example_input_array (1, 1, 24, 24) differs ...`` (what :func:`data_sample` did)."""
    return (
        f"{_shapes(sample)}: the module's example_input_array {_shapes(example)} differs from the data beyond the "
        "batch size"
    )


def datamodule_batch(datamodule: Any, max_samples: int = 64, n_inputs: int = 1, owner: str = "export") -> Any:
    """The model input of the first batch the datamodule serves for ``predict`` (else ``test``, ``val``).

    The datamodule is prepared and set up for that stage as a Trainer would (``prepare_data``, ``setup(stage)``).
    The input is the batch's first ``n_inputs`` items (``(x, y)`` → ``x``; ``(x1, x2, label)`` with two inputs →
    ``(x1, x2)``), a tensor batch itself, or a dict's ``input_ids``. ``None`` when it serves none of the stages.

    Raises:
        ValueError: ``prepare_data``/``setup`` or the dataloader fails (the message names ``data`` and the error), or
            the batch does not start with ``n_inputs`` tensors.
    """
    if datamodule is None:
        return None
    label = type(datamodule).__name__
    for stage, loader in (
        ("predict", "predict_dataloader"),
        ("test", "test_dataloader"),
        ("validate", "val_dataloader"),
    ):
        if not _serves(datamodule, loader):
            continue
        step = "prepare_data()"
        try:
            if callable(getattr(datamodule, "prepare_data", None)):
                datamodule.prepare_data()
            step = f"setup({stage!r})"
            if callable(getattr(datamodule, "setup", None)):
                datamodule.setup(stage)
            step = f"{loader}()"
            batch = next(iter(getattr(datamodule, loader)()), None)
        except Exception as err:  # a one-line error naming `data`, not a check silently dropped
            first = " ".join(str(err).split())[:300]
            raise InvalidArgumentError(
                f"{owner}(data={label}): `data` must serve a {stage} batch to check the export on; its {step} "
                f"raised {type(err).__name__}: {first}"
            ) from None
        if batch is None:  # an empty loader: try the next stage
            continue
        x = first_batch_input(batch, n_inputs)
        if x is None:
            raise InvalidArgumentError(
                f"{owner}(data={label}): `data` must serve batches that start with the model's {n_inputs} input "
                f"tensor(s) (a tensor, a tuple/list such as (x, y), or a dict with `input_ids`); its {stage} batch is "
                f"{_describe(batch)}."
            )
        return tuple(t[:max_samples] for t in x)
    return None


def _describe(batch: Any) -> str:
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {', '.join(type(b).__name__ for b in batch[:6])}"
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {list(batch)[:6]}"
    return f"a {type(batch).__name__}"


def inputs_read(
    ckpt_path: str | os.PathLike | None, config: Any = None, against: str | os.PathLike | None = None
) -> list[tuple[Any, str]]:
    """The files a command reads, as ``keep`` for :func:`~lightning_green.export.load.check_output_path`.

    The checkpoints, the ``config`` given, and the ``config.yaml`` files LightningCLI saved near each checkpoint (the
    run's, read when no config is given, and runs' records either way).
    """
    keep = [(ckpt_path, "`ckpt`, the checkpoint being read"), (against, "`against`, the baseline checkpoint")]
    if isinstance(config, (str, os.PathLike)):
        keep.append((config, "`config`, the config being read"))
    for arg, ckpt in (("ckpt", ckpt_path), ("against", against)):
        if ckpt is not None and os.path.isfile(ckpt):
            keep += [(path, f"a config LightningCLI saved near `{arg}`") for path in run_configs_near(ckpt)]
    return keep


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    module: str | type | nn.Module | None,
    out: str | os.PathLike,
    format: Format = "onnx",  # noqa: A002 - as the CLI flag
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    datamodule: Any = None,
    example_inputs: Any = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    verbose: bool = True,
) -> ExportResult:
    """Rebuild the (pruned) model from ``ckpt_path`` and export it, checked (see :func:`export_model`).

    Args:
        ckpt_path: A Lightning checkpoint (pruned ones are rebuilt from their StructuredPruning history).
        module: The LightningModule class, its import path, or an instance built as in training (``None``: the
            config's ``model.class_path``).
        out: Output file (``.onnx``/``.pt2``) or folder (``hf``); its parent directory must exist.
        format: ``onnx``, ``torch-export`` or ``hf``.
        config: LightningCLI YAML (or dict) with the ``model`` (and ``data``) sections used in training.
        datamodule: A datamodule (class, path or instance) whose first predict/test/val batch is also checked
            (see :func:`datamodule_batch`); ``None``: the config's ``data`` section, if any. With neither ``module``
            nor ``config``, the ``config.yaml`` LightningCLI saved with the run gives both (its data check is skipped,
            with a note, where that data cannot serve a batch here).
        example_inputs: Forward inputs; ``None``: the module's ``example_input_array``.
        atol: Absolute tolerance of the output check.
        rtol: Relative tolerance of the output check.
        verbose: Print the summary.

    Raises:
        ValueError: A bad argument, a checkpoint that does not match the module, a datamodule that fails to serve a
            batch or serves one without the model's inputs, a model the format cannot take
            (naming the blocking module/op), or outputs beyond the tolerance.
    """
    owner = "export"
    check_choice(owner, "format", format, FORMATS)
    check_export_out(owner, out, format, keep=inputs_read(ckpt_path, config))
    found = None
    if module is None and config is None:  # a LightningCLI run: its saved config names the model and the data
        config = found = saved_run_config(ckpt_path)
    model = load_checkpoint_module(ckpt_path, module, config=config, owner=owner)
    n_inputs = len(example_inputs_of(owner, model, example_inputs))
    checks = []
    dm = None
    try:
        dm = build_datamodule(datamodule, config, owner)
        x = datamodule_batch(dm, n_inputs=n_inputs, owner=owner)
    except InvalidArgumentError as err:
        if found is None or datamodule is not None:
            raise
        # Data the user did not name (the saved config's, e.g. a path relative to where training ran): the check on
        # the example input still runs.
        x = None
        if verbose:
            print(f"datamodule check skipped: the data of {found} could not serve a batch here ({err}); pass --data")
    if x is not None:
        checks.append(("datamodule batch", x))
        example = example_inputs_of(owner, model, example_inputs)
        check_data_inputs(owner, dm, example, x, model)
        sample = data_sample(example, x) if example_inputs is None else None
        if sample is not None:
            # An export traced on the example would have its fixed sizes, and the data's batch would fail it.
            example_inputs = sample
            if verbose:
                print(f"traced on the datamodule batch's first sample {sample_note(example, sample)}")
    return export_model(
        model, out, format, example_inputs=example_inputs, check_inputs=checks, atol=atol, rtol=rtol, verbose=verbose
    )
