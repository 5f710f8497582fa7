"""``lightning-green export`` and ``lightning-green bench-inference``: argument parsing and the printed output.

Bad input ends with a one-line ``lightning-green: error: ...`` and exit status 2 (``LIGHTNING_GREEN_DEBUG=1``
shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bench_main", "export_main", "main"]

COMMANDS = ("export", "bench-inference")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="Lightning checkpoint (pruned ones are rebuilt from their history)")
    p.add_argument(
        "--module",
        default=None,
        help="LightningModule class path (e.g. lightning_green.demos.DigitsCNN) or a demo's short name "
        "(default: the config's model.class_path)",
    )
    p.add_argument("--config", default=None, help="LightningCLI YAML used in training (model/data init_args)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON to this file")


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-green export",
        description="Rebuild the (pruned) model from a checkpoint, export it and check the export's outputs.",
    )
    _common(p)
    p.add_argument(
        "--data",
        default=None,
        help="datamodule class path whose first predict/test/val batch is also checked (default: the config's data)",
    )
    p.add_argument("--format", default="onnx", help="onnx | torch-export | hf (default: onnx)")
    p.add_argument("--out", required=True, help="output file (.onnx/.pt2) or folder (hf); its directory must exist")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the output check")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the output check")
    return p


def _bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-green bench-inference",
        description="Latency, throughput and energy per 1,000 predictions (tokens for LMs) per format and batch "
        "size, the model vs a baseline checkpoint side by side; stored in the run's green report.",
    )
    _common(p)
    p.add_argument("--against", default="none", help="baseline checkpoint (e.g. the dense run's), or 'none' (default)")
    p.add_argument(
        "--formats",
        default=None,
        help="comma-separated: eager,bf16,onnx,torch-export (default: eager,bf16,onnx on the CPU, "
        "eager,bf16,torch-export on a GPU)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:N or auto (a GPU if one is visible): where the models run; on a GPU its "
        "energy is read from NVML",
    )
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated ints >= 1 (default: 1,64)")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per model per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    p.add_argument("--rounds", type=int, default=3, help="rounds (the models' order rotates each round)")
    p.add_argument("--threads", type=int, default=1, help="threads for PyTorch and ONNX Runtime alike (default: 1)")
    p.add_argument("--per", default="auto", help="auto | prediction | token")
    p.add_argument(
        "--run-dir",
        default=None,
        help="run whose green report gets the 'inference cost' section (default: the run the checkpoint is in)",
    )
    p.add_argument("--no-report", action="store_true", help="do not touch any run's report")
    return p


def _run_data_sample(ns: argparse.Namespace, model: Any, owner: str) -> Any:
    """The run's data sample to benchmark on where it differs from the module's example input (as ``export`` traces).

    From ``--config`` or the ``config.yaml`` LightningCLI saved with the run; ``None`` (the example input) without
    one, for data that cannot serve a batch here, and for token ids (their length is the benchmark's choice).
    """
    from lightning_green._internal.validation import InvalidArgumentError
    from lightning_green.export.api import (
        build_datamodule,
        check_data_inputs,
        data_sample,
        datamodule_batch,
        sample_note,
    )
    from lightning_green.export.formats import is_token_ids
    from lightning_green.export.load import example_inputs_of, saved_run_config

    config = ns.config if ns.config is not None else (saved_run_config(ns.ckpt) if ns.module is None else None)
    if config is None:
        return None
    example = example_inputs_of(owner, model)
    if is_token_ids(example[0]):
        return None
    try:
        dm = build_datamodule(None, config, owner)
        batch = datamodule_batch(dm, n_inputs=len(example), owner=owner)
    except InvalidArgumentError as err:  # e.g. the saved data's path is relative to where it trained
        print(f"benchmarked on the module's example input: the data of {config} could not serve a batch here ({err})")
        return None
    if batch is None:
        return None
    try:
        check_data_inputs(owner, dm, example, batch, model)
    except InvalidArgumentError as err:
        print(f"benchmarked on the module's example input: {err}")
        return None
    sample = data_sample(example, batch)
    if sample is not None:
        print(f"benchmarked on the run's data sample {sample_note(example, sample)}")
    return sample


def _say_saved_config(ns: argparse.Namespace, ckpt: str, what: str = "checkpoint") -> None:
    """Say which config names the model (without --module and --config) and which of its arguments the checkpoint's win.

    The second also for a --config: the arguments LightningCLI recorded in the checkpoint replace the config's.
    """
    from lightning_green.export.load import recorded_differences, saved_run_config

    if not os.path.isfile(ckpt) or ns.module is not None:
        return
    found = saved_run_config(ckpt) if ns.config is None else None
    if found is not None:
        print(f"{what}: model from {found} (the config LightningCLI saved with the run)")
    config = found if found is not None else ns.config
    differ = recorded_differences(ckpt, config) if config is not None else None
    if differ is not None:
        print(
            f"{what}: the model arguments the checkpoint recorded are used where {config} differs: {differ} "
            "(a later fit into the same folder replaced it, or the run changed them, e.g. LearningRateFinder's lr)"
        )


def _write_json(path: str, data: dict) -> None:
    from lightning_green.energy.report import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def export_main(args: Sequence[str]) -> int:
    """``lightning-green export``; returns the exit status."""
    from lightning_green.export.api import export_checkpoint

    ns = _export_parser().parse_args(list(args))
    if ns.json:
        from lightning_green.export.api import inputs_read
        from lightning_green.export.load import check_output_path

        keep = [*inputs_read(ns.ckpt, ns.config), (ns.out, "`out`, the export being written")]
        if ns.format == "hf" and Path(ns.json).absolute().resolve().is_relative_to(Path(ns.out).absolute().resolve()):
            from lightning_green._internal.validation import InvalidArgumentError

            raise InvalidArgumentError(
                f"export(json={ns.json!r}): `json` must be outside `out` {ns.out!r}, the Hugging Face folder being "
                "written (its config.json and weights would be replaced)."
            )
        if ns.format == "onnx":
            keep.append((f"{ns.out}.data", "the weights file of `out`, the ONNX export being written"))
        check_output_path("export", ns.json, "json", keep=keep)
    _say_saved_config(ns, ns.ckpt)
    result = export_checkpoint(
        ns.ckpt, ns.module, ns.out, ns.format, config=ns.config, datamodule=ns.data, atol=ns.atol, rtol=ns.rtol
    )
    if ns.json:
        _write_json(ns.json, result.as_dict())
    return 0


def bench_main(args: Sequence[str]) -> int:
    """``lightning-green bench-inference``; returns the exit status."""
    from lightning_green._internal.validation import fail
    from lightning_green.export.api import inputs_read
    from lightning_green.export.bench import (
        bench_inference,
        check_bench_settings,
        default_formats,
        format_bench,
        parse_batch_sizes,
        parse_formats,
        resolve_device,
    )
    from lightning_green.export.load import check_output_path, load_checkpoint_module
    from lightning_green.export.report import ENERGY_REPORT, attach_to_run, check_run_dir, find_run_dir

    owner = "bench-inference"
    ns = _bench_parser().parse_args(list(args))
    device = resolve_device(ns.device, owner)
    formats = default_formats(device) if ns.formats is None else parse_formats(ns.formats, owner)
    if device.type != "cpu" and "onnx" in formats:
        fail(
            owner,
            "formats",
            ns.formats,
            f"a list without 'onnx' on {device} (ONNX Runtime runs on the CPU here: --device cpu for it)",
        )
    sizes = parse_batch_sizes(ns.batch_sizes, owner)
    check_bench_settings(owner, ns.repeats, ns.warmup, ns.rounds, ns.threads, ns.per)  # before loading checkpoints
    # Where the result goes is checked before the (long) benchmark, not found bad after it.
    if ns.no_report and ns.run_dir:
        fail(owner, "run_dir", ns.run_dir, "left out with --no-report (it names the run whose report to update)")
    run_dir = None if ns.no_report else (ns.run_dir or find_run_dir(ns.ckpt))
    against = None if str(ns.against).lower() in ("none", "") else ns.against
    if ns.json:
        keep = inputs_read(ns.ckpt, ns.config, against)
        if run_dir is not None:
            keep.append((Path(run_dir) / ENERGY_REPORT, "the energy report of `run_dir`, which the benchmark updates"))
        check_output_path(owner, ns.json, "json", keep=keep)
    if run_dir is not None:
        check_run_dir(run_dir)
    _say_saved_config(ns, ns.ckpt)
    model = load_checkpoint_module(ns.ckpt, ns.module, config=ns.config, owner=owner)
    models = {}
    if against is not None:
        _say_saved_config(ns, against, "against")
        base = load_checkpoint_module(against, ns.module, config=ns.config, owner=owner, ckpt_arg="against")
        if type(base) is not type(model):
            fail(
                owner,
                "against",
                against,
                f"a checkpoint of the same module as CKPT ({type(model).__name__}); it holds a {type(base).__name__}",
            )
        models["baseline"] = base.to(device)
    models["model"] = model.to(device)
    result = bench_inference(
        models,
        example_inputs=_run_data_sample(ns, model, owner),
        formats=formats,
        batch_sizes=sizes,
        repeats=ns.repeats,
        warmup=ns.warmup,
        rounds=ns.rounds,
        threads=ns.threads,
        per=ns.per,
        baseline="baseline" if against is not None else None,
    )
    data = result.as_dict()
    data["checkpoints"] = {"model": os.fspath(ns.ckpt), "baseline": against}
    print(format_bench(data))
    if ns.json:
        _write_json(ns.json, data)
        print(f"json: {ns.json}")
    if not ns.no_report:
        if run_dir is None:
            print("no run directory found above the checkpoint (pass --run-dir); no report updated.")
        else:
            path = attach_to_run(run_dir, data)
            print(f"inference cost added to {path} and the green report in {run_dir}")
    return 0


def main(argv: Sequence[str]) -> int:
    """Dispatch ``argv`` (starting with the subcommand name) and turn bad input into a one-line error, exit 2."""
    from lightning_green._internal.validation import find_argument_error

    command, rest = argv[0], list(argv[1:])
    fn = export_main if command == "export" else bench_main
    try:
        return fn(rest)
    except Exception as exc:
        err = find_argument_error(exc)
        if err is None and isinstance(exc, (OSError, ValueError)):
            err = exc
        if err is None or os.environ.get("LIGHTNING_GREEN_DEBUG"):
            raise
        print(f"lightning-green {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
