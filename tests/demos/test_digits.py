import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_green.cli import DEFAULT_MAX_EPOCHS
from lightning_green.demos import DigitsCNN, DigitsDataModule
from tests.helpers import QUIET


def test_splits_are_disjoint_stratified_and_cover_the_dataset():
    dm = DigitsDataModule(val_fraction=0.2, test_fraction=0.1, image_size=8)
    dm.setup("fit")
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sum(sizes) == 1797 and sizes[1] == pytest.approx(0.2 * 1797, abs=2)
    assert set(dm.val_set.tensors[1].tolist()) == set(range(10))
    train = {tuple(x.flatten().tolist()) for x in dm.train_set.tensors[0]}
    assert not any(tuple(x.flatten().tolist()) in train for x in dm.test_set.tensors[0][:50])


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (DigitsDataModule, {"batch_size": 0}, r"DigitsDataModule\(batch_size=0\): `batch_size` must be an int >= 1"),
        (DigitsDataModule, {"image_size": 4}, r"`image_size` must be an int >= 8"),
        (DigitsDataModule, {"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction < 1"),
        (DigitsCNN, {"channels": []}, r"DigitsCNN\(channels=\[\]\): `channels` must be a non-empty list"),
        (DigitsCNN, {"lr": 0}, r"`lr` must be a number > 0"),
        (
            DigitsCNN,
            {"optimizer": "adamw"},
            r"DigitsCNN\(optimizer='adamw'\): `optimizer` must be one of \('adam', 'sgd'\)",
        ),
    ],
)
def test_demo_rejects_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(("optimizer", "cls"), [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizer_choice_is_used_with_the_cosine_schedule(optimizer, cls):
    model = DigitsCNN(channels=[4, 8], lr=0.05, optimizer=optimizer)
    model.trainer = Trainer(max_epochs=6, logger=False, **QUIET)
    config = model.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert type(opt) is cls and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-4)
    assert (opt.param_groups[0].get("momentum"), opt.param_groups[0].get("nesterov")) == (
        (0.9, True) if optimizer == "sgd" else (None, None)
    )
    assert sched.T_max == 6


def test_predict_returns_a_class_per_image(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, logger=False, limit_predict_batches=2, **QUIET)
    out = trainer.predict(DigitsCNN(channels=[4, 8]), DigitsDataModule(batch_size=16))
    assert [o.shape for o in out] == [torch.Size([16]), torch.Size([16])]
    assert all(int(o.max()) <= 9 for o in out)


@pytest.mark.slow
def test_default_demo_reaches_97_percent(tmp_path):
    """The CLI's default job: DigitsCNN on digits for the default epochs (~30 s on 2 idle cores)."""
    seed_everything(0)
    trainer = Trainer(
        default_root_dir=tmp_path, max_epochs=DEFAULT_MAX_EPOCHS, logger=False, enable_checkpointing=False, **QUIET
    )
    trainer.fit(DigitsCNN(), DigitsDataModule())
    assert float(trainer.callback_metrics["val_acc"]) >= 0.97
