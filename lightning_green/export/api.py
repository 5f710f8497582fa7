"""Checkpoint in, checked export out: :func:`export_checkpoint`, and the datamodule batch it checks on."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from lightning_green._internal.validation import InvalidArgumentError, check_choice
from lightning_green.export.formats import FORMATS, ExportResult, Format, export_model
from lightning_green.export.load import (
    _read_config,
    _section_args,
    check_output_path,
    first_batch_input,
    load_checkpoint_module,
    resolve_class,
)

__all__ = ["build_datamodule", "datamodule_batch", "export_checkpoint"]


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
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"{owner}(data={cls.__name__}): building it with {init_args!r} failed: {str(err).splitlines()[0]}"
        ) from None


def datamodule_batch(datamodule: Any, max_samples: int = 64) -> Any:
    """The model input of the first batch the datamodule serves for ``predict`` (else ``test``, ``val``)."""
    if datamodule is None:
        return None
    for stage, loader in (
        ("predict", "predict_dataloader"),
        ("test", "test_dataloader"),
        ("validate", "val_dataloader"),
    ):
        if not hasattr(datamodule, loader):
            continue
        try:
            datamodule.setup(stage)
            batch = next(iter(getattr(datamodule, loader)()))
        except Exception:  # a stage the datamodule does not serve: try the next one
            continue
        x = first_batch_input(batch)
        if x is not None:
            return tuple(t[:max_samples] for t in x)
    return None


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
        datamodule: A datamodule (class, path or instance) whose first predict/test/val batch is also checked;
            ``None``: the config's ``data`` section, if any.
        example_inputs: Forward inputs; ``None``: the module's ``example_input_array``.
        atol: Absolute tolerance of the output check.
        rtol: Relative tolerance of the output check.
        verbose: Print the summary.

    Raises:
        ValueError: A bad argument, a checkpoint that does not match the module, a model the format cannot take
            (naming the blocking module/op), or outputs beyond the tolerance.
    """
    owner = "export"
    check_choice(owner, "format", format, FORMATS)
    check_output_path(owner, out, kind="dir" if format == "hf" else "file")
    model = load_checkpoint_module(ckpt_path, module, config=config, owner=owner)
    dm = build_datamodule(datamodule, config, owner)
    checks = []
    x = datamodule_batch(dm)
    if x is not None:
        checks.append(("datamodule batch", x))
    return export_model(
        model, out, format, example_inputs=example_inputs, check_inputs=checks, atol=atol, rtol=rtol, verbose=verbose
    )
