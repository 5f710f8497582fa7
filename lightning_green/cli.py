"""The ``lightning-green`` command: LightningCLI with the built-in demo and EnergyMonitor on by default.

``lightning-green fit`` with no arguments trains :class:`~lightning_green.demos.DigitsCNN` on
:class:`~lightning_green.demos.DigitsDataModule`, measures it with :class:`~lightning_green.EnergyMonitor`,
logs to TensorBoard under ``lightning_logs/`` and prints the energy summary. Everything is configurable as in
any LightningCLI: ``--model``/``--data`` (any LightningModule/LightningDataModule), ``--trainer.*``,
``--trainer.callbacks+=lightning_green.AMPScheduler``, ``--config examples/configs/energy.yaml``,
``--print_config``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_green._internal.validation import find_argument_error

__all__ = ["GreenCLI", "cli", "main"]

DEFAULT_MODEL = "lightning_green.demos.DigitsCNN"
DEFAULT_DATA = "lightning_green.demos.DigitsDataModule"
DEFAULT_CALLBACKS = [{"class_path": "lightning_green.EnergyMonitor"}]
DEFAULT_MAX_EPOCHS = 15


class GreenCLI(LightningCLI):
    """LightningCLI whose defaults are the digits demo with an EnergyMonitor.

    A YAML ``trainer.callbacks`` list replaces the default one (list it with the EnergyMonitor you want);
    ``--trainer.callbacks+=...`` on the command line appends to it.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Install the demo defaults."""
        parser.set_defaults(
            {
                "model": {"class_path": DEFAULT_MODEL},
                "data": {"class_path": DEFAULT_DATA},
                "trainer.callbacks": DEFAULT_CALLBACKS,
                "trainer.max_epochs": DEFAULT_MAX_EPOCHS,
            }
        )


def cli(args: Sequence[str] | None = None, run: bool = True) -> GreenCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` default to ``sys.argv[1:]``."""
    import lightning_green.demos  # noqa: F401 - registers the demo classes for short names (--model DigitsCNN)

    return GreenCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        auto_configure_optimizers=False,
        run=run,
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-green`` console script.

    A bad lightning-green argument ends with its one-line message and exit status 2, not a traceback from
    inside jsonargparse (set ``LIGHTNING_GREEN_DEBUG=1`` for the traceback).
    """
    try:
        cli(args)
    except Exception as exc:
        err = find_argument_error(exc)
        if err is None or os.environ.get("LIGHTNING_GREEN_DEBUG"):
            raise
        print(f"lightning-green: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
