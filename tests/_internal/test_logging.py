"""The one place that reads Lightning's private logging step and decision: fails if Lightning moves them."""

from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_green._internal.logging import epoch_log_step, log_step, should_log_batch, should_log_step
from tests.helpers import make_trainer


def test_helpers_follow_lightnings_own_step_and_decision(tmp_path):
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((batch_idx, log_step(trainer), should_log_step(trainer), should_log_batch(trainer)))

        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(("epoch_end", epoch_log_step(trainer)))

    trainer = make_trainer(
        tmp_path, callbacks=[Probe()], limit_train_batches=6, accumulate_grad_batches=2, log_every_n_steps=2
    )
    trainer.fit(BoringModel())
    # 3 optimizer steps; Lightning logs the 2nd one (step index 1), never an accumulating micro-batch
    assert seen == [
        (0, 0, False, False),
        (1, 0, False, False),
        (2, 1, False, True),
        (3, 1, True, True),
        (4, 2, False, False),
        (5, 2, False, False),
        ("epoch_end", 2),
    ]
