"""The ``lightning-green`` command: LightningCLI with the built-in demo and EnergyMonitor on by default.

``lightning-green fit`` with no arguments trains :class:`~lightning_green.demos.DigitsCNN` on
:class:`~lightning_green.demos.DigitsDataModule`, measures it with :class:`~lightning_green.EnergyMonitor`,
logs to TensorBoard under ``lightning_logs/`` and prints the energy summary. Everything is configurable as in
any LightningCLI: ``--model``/``--data`` (any LightningModule/LightningDataModule), ``--trainer.*``,
``--trainer.callbacks+=lightning_green.AMPScheduler``, ``--config examples/configs/energy.yaml``,
``--print_config``.

``lightning-green report RUN_DIR [RUN_DIR ...]`` (see :func:`report`) regenerates the green report of finished
runs and, given several, compares them side by side. Such commands, which are not a Trainer method, are listed
in :data:`COMMANDS` (a new one is one entry there) and shown by ``lightning-green --help``.

Errors: a bad argument or setting found while parsing, instantiating or setting up (up to ``on_fit_start``) ends
with its one-line message and exit status 2. A failure once training runs (:class:`GreenRuntimeError`, or any
other) keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_green._internal.runs import run_dir
from lightning_green._internal.validation import InvalidArgumentError, find_argument_error

__all__ = ["COMMANDS", "Command", "GreenCLI", "cli", "main", "report"]

DEFAULT_MODEL = "lightning_green.demos.DigitsCNN"
DEFAULT_DATA = "lightning_green.demos.DigitsDataModule"
DEFAULT_CALLBACKS = [{"class_path": "lightning_green.EnergyMonitor"}, {"class_path": "lightning_green.GreenReport"}]
DEFAULT_MAX_EPOCHS = 15
DEFAULT_LOG_EVERY_N_STEPS = 5  # the digits demo has 20 batches an epoch: per-step energy 4 times an epoch


class RunDirSaveConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml``, saved in the run's folder beside its energy and green reports.

    Lightning's own callback saves it in ``trainer.log_dir``, which for a W&B or MLflow logger is the ``save_dir``
    every run shares (the next run overwrites it). Built with ``save_to_log_dir=False``, Lightning's documented way to
    save elsewhere: the folder is resolved in ``setup`` (a collective), the file written by ``save_config`` (rank 0).
    """

    _run_dir: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.already_saved:
            self._run_dir = run_dir(trainer)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self._run_dir or trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        self.parser.save(
            self.config,
            os.path.join(folder, self.config_filename),
            skip_none=False,
            overwrite=self.overwrite,
            multifile=self.multifile,
        )


class GreenCLI(LightningCLI):
    """LightningCLI whose defaults are the digits demo with an EnergyMonitor.

    A YAML ``trainer.callbacks`` list replaces the default one (list it with the EnergyMonitor you want);
    ``--trainer.callbacks+=...`` on the command line appends to it. Lightning's progress bar (TQDM or Rich, the
    default or one configured) becomes its green twin, which shows the energy figures with units (``516 J``).
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, whose help also lists the commands of :data:`COMMANDS`."""
        from jsonargparse import DefaultHelpFormatter

        class _Formatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
            """Keeps the epilog's lines."""

        kwargs.setdefault("epilog", _commands_epilog())
        kwargs.setdefault("formatter_class", _Formatter)
        return super().init_parser(**kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The demo classes go into the arguments (see parse_arguments) unless they cannot: `args` given as a dict or
        # Namespace, or classes that may come from default config files or the environment (see setup_parser).
        self._name_demo_classes = not isinstance(kwargs.get("args"), (dict, Namespace))
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Install the demo defaults (the demo model and data: see :meth:`parse_arguments`)."""
        defaults: dict[str, Any] = {
            "trainer.callbacks": DEFAULT_CALLBACKS,
            "trainer.max_epochs": DEFAULT_MAX_EPOCHS,
            "trainer.log_every_n_steps": DEFAULT_LOG_EVERY_N_STEPS,
        }
        if not self._name_demo_classes:  # as parser defaults, as LightningCLI does (with jsonargparse's carry-over)
            defaults.update({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})
        parser.set_defaults(defaults)

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """LightningCLI's parser, with or without subcommands (``run=False``): where the demo classes go."""
        self._subcommands = add_subcommands
        kwargs = [main_kwargs, subparser_kwargs, *(v for v in subparser_kwargs.values() if isinstance(v, dict))]
        # Environment variables (PL_FIT__MODEL, PL_FIT__CONFIG) are parsed with `default_env`, or when jsonargparse's
        # documented JSONARGPARSE_DEFAULT_ENV=true switches it on whatever the code says.
        env = os.getenv("JSONARGPARSE_DEFAULT_ENV", "").lower() == "true"
        if env or any(k.get("default_config_files") or k.get("default_env") for k in kwargs):
            self._name_demo_classes = False  # a class may come from there: the arguments cannot tell
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, with the demo model and data where the arguments and ``--config`` files name no class of their own.

        Not as parser defaults: jsonargparse keeps a default class's ``init_args`` whose names the class given
        instead also has, so ``--model mypkg.MyModule`` trained with the demo's ``lr`` and ``batch_size`` in place
        of its own defaults. Named first, the demo classes take later ``--model.lr=...`` and config values as usual.
        """
        if isinstance(args, (dict, Namespace)) or not self._name_demo_classes:
            return super().parse_arguments(parser, args)
        given = list(args) if args is not None else sys.argv[1:]
        with_demo = with_demo_classes(given, subcommands=getattr(self, "_subcommands", True))
        if args is None and with_demo == given:
            return super().parse_arguments(parser, None)
        if args is None:  # from the command line: LightningCLI's warning about both would be about us
            self.config = parser.parse_args(with_demo)
            return None
        return super().parse_arguments(parser, with_demo)

    def before_fit(self) -> None:
        """See :meth:`_rebuild_pruned`."""
        self._rebuild_pruned("fit")

    def before_validate(self) -> None:
        """See :meth:`_rebuild_pruned`."""
        self._rebuild_pruned("validate")

    def before_test(self) -> None:
        """See :meth:`_rebuild_pruned`."""
        self._rebuild_pruned("test")

    def before_predict(self) -> None:
        """See :meth:`_rebuild_pruned`."""
        self._rebuild_pruned("predict")

    def _rebuild_pruned(self, subcommand: str) -> None:
        """Cut the model to a pruned ``--ckpt_path``'s shapes when no StructuredPruning in the run will.

        StructuredPruning rebuilds a checkpoint's pruned architecture before its weights load; without it in the
        callbacks (the default list, or a config for evaluation only) the weights met the dense model ("size
        mismatch"). The checkpoint's pruning history does the same here (as ``load_pruned`` and ``export`` do).
        """
        import torch

        from lightning_green.callbacks.structured_pruning import StructuredPruning
        from lightning_green.pruning.history import find_pruning_state, rebuild_from_checkpoint

        ckpt = self.config[subcommand].get("ckpt_path")
        keywords = ("last", "best", "hpc", "registry")
        local = isinstance(ckpt, str) and ckpt and "://" not in ckpt and not ckpt.startswith(keywords)
        if local and not os.path.isfile(ckpt):  # Lightning's own message is a traceback from deep in the restore
            from lightning_green._internal.validation import InvalidArgumentError

            what = "a directory" if os.path.isdir(ckpt) else "no file"
            raise InvalidArgumentError(
                f"lightning-green {subcommand}(ckpt_path={ckpt!r}): `ckpt_path` must be a checkpoint file, "
                f"'last' (or a URL); it is {what}."
            )
        if ckpt == "best":  # Lightning's ValueError, a traceback from deep in the restore
            from lightning_green._internal.validation import InvalidArgumentError

            raise InvalidArgumentError(
                f"lightning-green {subcommand}(ckpt_path='best'): 'best' is the best checkpoint of a fit run earlier "
                "by the same Trainer, and each lightning-green command starts a new one; give the checkpoint file "
                "(e.g. lightning_logs/version_0/checkpoints/epoch=...ckpt)."
            )
        if not ckpt or not os.path.isfile(ckpt) or self.model is None:
            return
        if any(isinstance(cb, StructuredPruning) for cb in self.trainer.callbacks):  # type: ignore[attr-defined]
            return
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        if find_pruning_state(checkpoint) is None:
            return
        if rebuild_from_checkpoint(self.model, checkpoint, owner=f"lightning-green {subcommand} --ckpt_path"):
            print(f"lightning-green: {ckpt} holds a pruned model: rebuilt to its shapes from its pruning history.")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer, with Lightning's progress bar swapped for the green one of the same kind."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except RuntimeError as err:
            if "more than one stateful callback" not in str(err):
                raise
            # e.g. `--trainer.callbacks+=lightning_green.EnergyMonitor` next to the default one: Lightning's refusal,
            # a setting of the user's (one line, exit 2), not a failure.
            raise InvalidArgumentError(
                f"--trainer.callbacks: {str(err).strip().rstrip('.')}: list each of these callbacks once; the default "
                f"list is {[cb['class_path'] for cb in DEFAULT_CALLBACKS]}, and a `trainer.callbacks` list in a "
                "--config file replaces it (with the arguments you want)."
            ) from err
        _green_progress_bar(trainer)
        return trainer


def with_demo_classes(args: Sequence[str], subcommands: bool = True) -> list[str]:
    """``args`` with ``--model``/``--data`` naming the demo classes right after the subcommand, where needed.

    Each of the two is added when neither the arguments nor a ``--config`` file names a class for it; without
    ``subcommands`` (``LightningCLI(run=False)``) at the start.

    Example:
        >>> with_demo_classes(["fit", "--model.lr=0.1"])[1:]
        ['--model=lightning_green.demos.DigitsCNN', '--data=lightning_green.demos.DigitsDataModule', '--model.lr=0.1']
        >>> with_demo_classes(["fit", "--model", "mypkg.MyModule"])[1:3]
        ['--data=lightning_green.demos.DigitsDataModule', '--model']
        >>> with_demo_classes(["--help"]), with_demo_classes(["--model.lr=0.1"], subcommands=False)[0]
        (['--help'], '--model=lightning_green.demos.DigitsCNN')
    """
    args = list(args)
    at: int | None = -1  # without subcommands (LightningCLI(run=False)): at the start
    if subcommands:
        at = next((i for i, a in enumerate(args) if a in LightningCLI.subcommands()), None)
        if at is None:
            return args
    sub = args[at] if at >= 0 else ""
    configs = _values(args, ("--config", "-c"))
    extra = []
    for key, default in (("model", DEFAULT_MODEL), ("data", DEFAULT_DATA)):
        named = any(a.startswith(f"--{key}.class_path") for a in args)
        named = named or any(_names_class(value) for value in _values(args, (f"--{key}",)))
        if not named and not any(_config_names_class(config, sub, key) for config in configs):
            extra.append(f"--{key}={default}")
    return [*args[: at + 1], *extra, *args[at + 1 :]]


def _values(args: Sequence[str], flags: tuple[str, ...]) -> list[str]:
    """The values given to ``flags`` (``--flag value`` or ``--flag=value``)."""
    out = [args[i + 1] for i, a in enumerate(args[:-1]) if a in flags]
    return out + [a.split("=", 1)[1] for a in args if a.startswith(tuple(f"{f}=" for f in flags))]


def _load(value: str) -> Any:
    """A ``--config``/``--model`` value as jsonargparse reads it: a YAML file's content, or the value as YAML."""
    import yaml

    try:
        if os.path.isfile(value):
            with open(value, encoding="utf-8") as f:
                return yaml.safe_load(f)
        return yaml.safe_load(value)
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse says what is wrong with it


def _names_class(value: str) -> bool:
    """Whether a ``--model``/``--data`` value decides the class (a class path, a dict with ``class_path``, null)."""
    return _a_class_or_none(_load(value))


def _a_class_or_none(value: Any) -> bool:
    """Whether a loaded value decides the class: a class path, a dict with ``class_path``, or ``None`` (no class)."""
    return value is None or isinstance(value, str) or (isinstance(value, dict) and "class_path" in value)


def _config_names_class(config: str, subcommand: str, key: str) -> bool:
    """Whether the config (a YAML file or string) gives ``key`` a class (at the top or under the command)."""
    doc = _load(config)
    if not isinstance(doc, dict):
        return False
    for section in (doc, doc.get(subcommand)):
        if isinstance(section, dict) and key in section and _a_class_or_none(section[key]):
            return True
    return False


def _green_progress_bar(trainer: Trainer) -> None:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from lightning_green.callbacks.progress_bar import GreenRichProgressBar, GreenTQDMProgressBar

    twins: dict[type, type] = {RichProgressBar: GreenRichProgressBar, TQDMProgressBar: GreenTQDMProgressBar}
    for i, cb in enumerate(trainer.callbacks):  # type: ignore[attr-defined]
        twin = twins.get(type(cb))  # exactly Lightning's class: a user's own subclass is left alone
        if twin is not None:
            # The bar has not run yet: the twin takes its settings (refresh rate, theme, ...) as they are. Trainer
            # looks its progress bar up in trainer.callbacks at each use, so replacing the entry is enough.
            green = twin.__new__(twin)
            green.__dict__.update(cb.__dict__)
            trainer.callbacks[i] = green  # type: ignore[attr-defined]


def cli(args: Sequence[str] | None = None, run: bool = True, exit_on_error: bool = True) -> GreenCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` default to ``sys.argv[1:]``.

    ``exit_on_error=False``: a parse error raises jsonargparse's ``ArgumentError`` instead of printing the usage and
    exiting (:func:`main` turns it into one line).
    """
    import lightning_green.demos  # noqa: F401 - registers the demo classes for short names (--model DigitsCNN)

    # LightningCLI passes the top-level keys to the main parser and each subcommand's own to its parser.
    # allow_abbrev=False: `--trainer.max_epoch 3` is an unknown option, not argparse's guess at `max_epochs`.
    kwargs = {"exit_on_error": exit_on_error, "allow_abbrev": False}
    parser_kwargs: dict[str, Any] = {**kwargs, **{name: dict(kwargs) for name in LightningCLI.subcommands()}}
    return GreenCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=RunDirSaveConfig,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        parser_kwargs=parser_kwargs,
        args=list(args) if args is not None else None,
        auto_configure_optimizers=False,
        run=run,
    )


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-green report",
        description="Regenerate the green report of finished runs (written into each run directory) and, given "
        "several, compare them side by side: energy-to-target, time-to-target, final metric, MACs. Each run's own "
        "report keeps the settings its GreenReport recorded (metric, mode, target, file name, HTML page) unless "
        "--metric/--mode/--target/--no-html say otherwise (a --metric other than the recorded one drops the recorded "
        "mode and target); the comparison uses these options and their defaults.",
    )
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="log dir of a fit run (e.g. lightning_logs/version_0)"
    )
    p.add_argument(
        "--metric",
        default=None,
        help="validation metric (default: the one GreenReport recorded, else the first logged of val_acc, val_loss, "
        "val_ppl)",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "max", "min"),
        default=None,
        help="is higher better? (default: as GreenReport recorded, else by name)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="metric value for energy-/time-to-target (default: the one GreenReport recorded; in the comparison, the "
        "least good best value among the runs)",
    )
    p.add_argument("--names", default=None, help="comma-separated names of the runs, in order")
    p.add_argument(
        "--out",
        default=None,
        help="folder of the comparison files (several runs; default: .); each run's report goes into its run dir",
    )
    p.add_argument("--json", default=None, help="also write the comparison as JSON to this file")
    p.add_argument("--no-html", action="store_true", help="Markdown only (an HTML page left from before is removed)")
    p.add_argument(
        "--energy-report",
        default=None,
        metavar="NAME",
        help="file name of the energy report in each run dir (EnergyMonitor's report_filename; default: "
        "energy_report.json, else the one energy report JSON in the dir)",
    )
    return p


def _check_output(parser: argparse.ArgumentParser, flag: str, value: str, folder: bool) -> None:
    """Refuse an output path that cannot be written before any report is rewritten (one line naming the option)."""
    from pathlib import Path

    path = Path(value).absolute()
    what = "a folder (created if missing)" if folder else "a file path (e.g. comparison.json)"
    if path.exists():
        if folder != path.is_dir():
            parser.error(f"argument {flag}: {value!r} is {'a file' if folder else 'a folder'}; pass {what}")
        writable = path if folder else path.parent
    else:
        writable = path.parent
        while not writable.exists():
            writable = writable.parent
        if not writable.is_dir():
            parser.error(f"argument {flag}: {value!r} cannot be created ({str(writable)!r} is a file); pass {what}")
    if not os.access(writable, os.W_OK | os.X_OK):
        parser.error(f"argument {flag}: {value!r} is not writable ({str(writable)!r}); pass {what} you can write")


def _recorded_settings(run: Any, ns: argparse.Namespace) -> dict[str, Any]:
    """The run report's settings: the options given, else what the run's GreenReport recorded, else the defaults."""
    from lightning_green.report.green import report_settings

    return report_settings(run, metric=ns.metric, mode=ns.mode, target=ns.target, html=False if ns.no_html else None)


def report(args: Sequence[str]) -> int:
    """``lightning-green report``: regenerate reports of finished runs and compare several; returns the exit status.

    Raises:
        RunDirError: A run directory is missing or unreadable (``main`` turns it into a one-line error).
    """
    from lightning_green.energy.report import write_bytes_atomic
    from lightning_green.report import compare_runs, format_comparison, load_run, write_comparison, write_report
    from lightning_green.report.run import ENERGY_REPORT, RunDirError

    parser = _report_parser()
    ns = parser.parse_args(list(args))
    if ns.target is not None and not math.isfinite(ns.target):
        parser.error(f"argument --target: must be a finite number, got {ns.target}")
    if ns.json and len(ns.run_dirs) < 2:
        parser.error(
            "argument --json: writes the comparison of two or more runs; one run's figures are in its "
            "energy_report.json"
        )
    if ns.out is not None and len(ns.run_dirs) < 2:
        parser.error(
            "argument --out: applies to the comparison of two or more runs (its folder); one run's report is "
            "written into its own run dir (drop --out)"
        )
    ns.out = "." if ns.out is None else ns.out
    name = ns.energy_report
    if name is not None and (name in ("", ".", "..") or os.path.basename(name) != name):
        parser.error(f"argument --energy-report: {ns.energy_report!r} is not a plain file name (no directory part)")
    if len(ns.run_dirs) > 1:  # before any run report is rewritten
        _check_output(parser, "--out", ns.out, folder=True)
        if ns.json:
            if str(ns.json).endswith(("/", os.sep)):
                parser.error(f"argument --json: {ns.json!r} names a folder; pass the path of a file")
            _check_output(parser, "--json", ns.json, folder=False)
            from lightning_green.energy.report import is_energy_report

            if is_energy_report(ns.json):  # a run's measured energy, which nothing can write again
                parser.error(
                    f"argument --json: {ns.json!r} is a lightning-green energy report; pass another file path for "
                    "the comparison"
                )
    names = [n.strip() for n in ns.names.split(",")] if ns.names else []
    if any(not n for n in names):
        parser.error(f"argument --names: {ns.names!r} has an empty name; give one name per run, comma-separated")
    if names and len(names) != len(ns.run_dirs):
        raise RunDirError(f"--names has {len(names)} name(s) for {len(ns.run_dirs)} run directories.")
    runs = [
        load_run(d, name=names[i] if names else None, energy_report=ns.energy_report or ENERGY_REPORT)
        for i, d in enumerate(ns.run_dirs)
    ]
    for run in runs:
        for problem in run.scalars.problems:  # also noted in the report
            print(
                f"lightning-green report: warning: {run.name}: the logged scalars are incomplete: {problem}",
                file=sys.stderr,
            )
    seen: dict[str, int] = {}
    for run in runs:  # names must tell runs apart in the comparison
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"
    mode = ns.mode or "auto"
    if len(runs) == 1 and ns.metric is not None and len(runs[0].scalars) and ns.metric not in runs[0].scalars:
        # (a typo would rewrite the run's good report with one that has no metric section)
        logged = sorted(t for t in runs[0].scalars.tags() if not t.startswith(("energy/", "power/", "carbon/")))
        raise RunDirError(
            f"metric {ns.metric!r} was not logged in: {runs[0].name} (it logged {', '.join(logged) or 'none'})."
        )
    if len(runs) > 1:  # a comparison error (a --metric one run lacks) before any file is rewritten
        compare_runs(runs, metric=ns.metric, target=ns.target, mode=mode)
    written = []
    for run in runs:
        settings = _recorded_settings(run, ns)
        files = write_report(
            run,
            metric=settings["metric"],
            mode=settings["mode"],
            target=settings["target"],
            filename=settings["filename"],
            html=settings["html"],
        )
        written.append(files)
        print(f"{run.name}: {files.markdown}" + (f", {files.html}" if files.html else ""))
    if len(runs) > 1:
        cmp, files = write_comparison(
            runs, ns.out, metric=ns.metric, target=ns.target, mode=mode, html=not ns.no_html, reports=written
        )
        print(format_comparison(cmp))
        print(f"comparison: {files.markdown}" + (f", {files.html}" if files.html else ""))
        if ns.json:
            import json

            write_bytes_atomic(ns.json, (json.dumps(cmp.as_dict(), indent=2) + "\n").encode("utf-8"))
    return 0


def _report_errors() -> tuple[type[BaseException], ...]:
    from lightning_green.report.run import RunDirError

    return (RunDirError, OSError)


@dataclass(frozen=True)
class Command:
    """A ``lightning-green`` command that is not a Trainer method (those are LightningCLI's own subcommands).

    Args:
        help: One line for ``lightning-green --help``.
        run: Called with the arguments after the command name; returns the exit status.
        errors: Returns the exception types that are the user's mistake (a missing file, a bad option): they end
            with a one-line message and exit status 2 (a callable, so that the command's modules load lazily).
    """

    help: str
    run: Callable[[Sequence[str]], int]
    errors: Callable[[], tuple[type[BaseException], ...]] = lambda: ()


def _export_command(name: str) -> Callable[[Sequence[str]], int]:
    def run(args: Sequence[str]) -> int:
        # lightning_green.export.cli turns its own bad input into a one-line error and exit status 2.
        from lightning_green.export.cli import main as export_main

        return export_main([name, *args])

    return run


COMMANDS: dict[str, Command] = {
    "report": Command(
        "regenerate the green report of finished runs; compare several side by side", report, _report_errors
    ),
    "export": Command(
        "export a (pruned) checkpoint to ONNX, torch.export or Hugging Face, checked against the original",
        _export_command("export"),
    ),
    "bench-inference": Command(
        "latency, throughput and energy per 1,000 predictions of a checkpoint, against a baseline",
        _export_command("bench-inference"),
    ),
}
"""The commands besides LightningCLI's fit/validate/test/predict, by name. Add one here."""


def _commands_epilog() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name.ljust(width)}  {cmd.help}" for name, cmd in sorted(COMMANDS.items())]
    return "other commands (lightning-green COMMAND --help):\n" + "\n".join(lines)


def _raised_while_running(exc: BaseException) -> bool:
    """Whether ``exc`` came out of the Trainer's run stage (sanity check, training, evaluation), not its setup.

    Everything up to ``on_fit_start`` (callback/module setup, strategy setup, checkpoint restore) runs before
    ``Trainer._run_stage`` (Lightning 2.4-2.6); an argument error raised there is a configuration error. The name is
    read from the traceback, nothing is patched; tests/test_cli.py checks it still matches.
    """
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_run_stage" and os.path.basename(code.co_filename) == "trainer.py":
            return True
        tb = tb.tb_next
    return False


def _one_line_exit(err: BaseException | str) -> None:
    print(f"lightning-green: error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-green`` console script (``args`` default to the command line).

    A configuration error (a bad argument or setting, found while parsing, instantiating or setting up) ends with
    its one-line message and exit status 2, not a traceback from inside jsonargparse; so does a user mistake in a
    :data:`COMMANDS` command (e.g. a bad ``report`` run directory). A failure once training runs keeps its
    traceback. Set ``LIGHTNING_GREEN_DEBUG=1`` for the traceback of every error.
    """
    argv = list(args) if args is not None else sys.argv[1:]
    command = COMMANDS.get(argv[0]) if argv else None
    if command is not None:
        try:
            raise SystemExit(command.run(argv[1:]))
        except command.errors() as err:
            if os.environ.get("LIGHTNING_GREEN_DEBUG"):
                raise
            _one_line_exit(err)
    try:
        # Without `args`, LightningCLI reads sys.argv itself: passing both makes it warn at every run.
        cli(args, exit_on_error=bool(os.environ.get("LIGHTNING_GREEN_DEBUG")))
    except argparse.ArgumentError as exc:  # jsonargparse's parse error: the user's mistake in one line, no usage
        from lightning_green._internal.parse_errors import summarise_parse_error

        message = summarise_parse_error(str(exc))
        if "invalid choice" in message:  # the subcommand: ours are not LightningCLI's
            message = message.rstrip(")") + "".join(f", {name!r}" for name in sorted(COMMANDS)) + ")"
        _one_line_exit(message)
    except Exception as exc:
        err = find_argument_error(exc)
        if err is None or _raised_while_running(exc) or os.environ.get("LIGHTNING_GREEN_DEBUG"):
            raise
        _one_line_exit(err)


if __name__ == "__main__":  # pragma: no cover
    main()
