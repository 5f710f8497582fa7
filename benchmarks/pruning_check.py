"""What checking a prune costs: the check's forward vs the prune itself vs one training step (CPU, one process).

StructuredPruning runs the pruned model once on the example input after every cut (and undoes a cut that breaks
it). For Lightning's transformer demo, the digits CNN and the small digits ResNet this prints, measured side by side
in alternating rounds (median of process CPU time, less sensitive to a shared machine's neighbours than wall time):

- ``check / prune``: one check (:func:`lightning_green.pruning.quiet_forward` on the example input) over one prune
  (:meth:`ChannelPruner.prune`, tracing + cut + MAC count) of the same model — goal: well below 1;
- ``check / train step``: the same check over one training step (forward + backward + Adam) on a batch.

    python benchmarks/pruning_check.py            # 7 rounds
    python benchmarks/pruning_check.py --quick    # 3 rounds
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _common import emit, environment, median, parser
from lightning.pytorch.demos.transformer import LightningTransformer
from torch import nn

from lightning_green.demos import DigitsCNN, DigitsResNet
from lightning_green.pruning import ChannelPruner, Probe, quiet_forward


def cpu_time(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def cases() -> dict[str, tuple[nn.Module, Any, Any, Callable[[nn.Module, Any], torch.Tensor]]]:
    """name -> (model, example input, training batch, loss function)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (8, 33), generator=g)
    images = torch.randn(32, 1, 24, 24, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)

    def lm_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return F.nll_loss(m(batch[0], batch[1]), batch[1].reshape(-1))

    def ce(m: nn.Module, batch: Any) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    return {
        "LightningTransformer": (
            LightningTransformer(vocab_size=256),
            (tokens[:1, :-1], tokens[:1, 1:]),
            (tokens[:, :-1], tokens[:, 1:]),
            lm_loss,
        ),
        "DigitsCNN": (DigitsCNN(), torch.zeros(1, 1, 24, 24), (images, labels), ce),
        "DigitsResNet": (DigitsResNet(), torch.zeros(1, 1, 24, 24), (images, labels), ce),
    }


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    rounds = 3 if args.quick else 7
    results: dict[str, Any] = {"environment": environment(), "rounds": rounds, "models": {}}
    for name, (model, example, batch, loss_fn) in cases().items():
        torch.manual_seed(0)
        model.train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        probe = Probe(example)
        check_s, prune_s, step_s = [], [], []

        def step(model=model, opt=opt, batch=batch, loss_fn=loss_fn) -> None:
            opt.zero_grad()
            loss_fn(model, batch).backward()
            opt.step()

        for r in range(rounds):
            fresh = copy.deepcopy(model)
            jobs = [
                ("check", lambda fresh=fresh, probe=probe: quiet_forward(fresh, probe)),
                ("prune", lambda fresh=fresh, x=example: ChannelPruner().prune(fresh, x, ratio=0.3)),
                ("step", step),
            ]
            # Alternate the order each round; the prune comes after the check of the same (dense) copy.
            if r % 2:
                jobs = [jobs[2], jobs[0], jobs[1]]
            for kind, job in jobs:
                {"check": check_s, "prune": prune_s, "step": step_s}[kind].append(cpu_time(job))
        results["models"][name] = {
            "check_ms": round(1e3 * median(check_s), 2),
            "prune_ms": round(1e3 * median(prune_s), 1),
            "train_step_ms": round(1e3 * median(step_s), 1),
            "check / prune": round(median(check_s) / median(prune_s), 4),
            "check / train step": round(median(check_s) / median(step_s), 3),
        }
    emit(results, args.json)


if __name__ == "__main__":
    main()
