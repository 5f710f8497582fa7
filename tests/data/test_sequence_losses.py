"""sequence_losses: per-sequence causal-LM losses (against Hugging Face's own loss), and DataPruning on an HF LM."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from lightning_green import DataPruning, reduce_sample_losses, sequence_losses
from lightning_green._internal.validation import InvalidArgumentError

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False, "enable_checkpointing": False}


def padded_batch(seed: int = 0, batch: int = 4, time: int = 10, vocab: int = 256):
    """Token ids with right padding of different lengths and a few ``-100`` labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, time), generator=gen)
    lengths = torch.tensor([time, time - 3, 5, 2])[:batch]
    mask = (torch.arange(time)[None, :] < lengths[:, None]).long()
    labels = ids.clone()
    labels[0, 4] = -100  # a prompt token: not predicted
    return ids, mask, labels


def test_the_token_weighted_mean_is_the_hf_models_own_loss():
    pytest.importorskip("transformers")
    from lightning_green.testing.hf import tiny_causal_lm

    model = tiny_causal_lm("llama", num_layers=1).eval()
    ids, mask, labels = padded_batch()
    hf_labels = labels.masked_fill(mask == 0, -100)  # HF ignores only -100, so padding is labelled so
    out = model(input_ids=ids, attention_mask=mask, labels=hf_labels)
    losses = sequence_losses(out.logits, labels, mask)
    counts = (hf_labels[:, 1:] != -100).sum(dim=1)
    assert losses.shape == (4,) and losses.dtype == torch.float32
    assert torch.allclose((losses * counts).sum() / counts.sum(), out.loss, atol=1e-5)
    for i in range(4):  # and each sequence alone is the HF loss of that sequence
        one = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], labels=hf_labels[i : i + 1]).loss
        assert torch.allclose(losses[i], one, atol=1e-4)


def test_without_shift_the_logits_predict_the_labels_in_place_and_empty_sequences_get_zero():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (3, 5))
    labels[2] = -1  # nothing to predict in the last sequence
    losses = sequence_losses(logits, labels, ignore_index=-1, shift=False)
    expected = torch.nn.functional.cross_entropy(logits[:2].reshape(-1, 7), labels[:2].reshape(-1), reduction="none")
    assert torch.allclose(losses[:2], expected.view(2, 5).mean(dim=1))
    assert losses[2].item() == 0.0
    losses.sum().backward()  # differentiable, and the empty sequence passes no gradient
    assert logits.grad[2].abs().sum() == 0 and logits.grad[:2].abs().sum() > 0


def test_labels_and_mask_follow_the_logits_device_and_numpy_ignore_index_is_taken():
    import numpy as np

    logits = torch.randn(2, 4, 8, device="meta")  # a model split over devices returns logits on its last one
    losses = sequence_losses(logits, torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 4, dtype=torch.bool))
    assert losses.device.type == "meta" and losses.shape == (2,)
    labels = torch.tensor([[1, 2, 3, 4], [1, 2, 7, 7]])
    expected = sequence_losses(torch.zeros(2, 4, 8), labels, ignore_index=7)
    assert torch.equal(sequence_losses(torch.zeros(2, 4, 8), labels, ignore_index=np.int64(7)), expected)


def test_half_precision_logits_give_fp32_losses():
    logits = torch.zeros(2, 4, 8, dtype=torch.bfloat16)
    losses = sequence_losses(logits, torch.ones(2, 4, dtype=torch.long))
    assert losses.dtype == torch.float32 and torch.allclose(losses, torch.full((2,), 8.0).log())


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"logits": torch.zeros(2, 4)}, InvalidArgumentError, "of shape (batch, time, vocab)"),
        ({"labels": torch.zeros(2, 4)}, InvalidArgumentError, "`labels` must be integer token ids"),
        ({"labels": torch.zeros(2, 3, dtype=torch.long)}, InvalidArgumentError, "(batch, time) = (2, 4)"),
        ({"attention_mask": torch.ones(2, 5)}, InvalidArgumentError, "`attention_mask` must have the labels' shape"),
        ({"labels": torch.ones(2, 4, dtype=torch.bool)}, InvalidArgumentError, "`labels` must be integer token ids"),
        ({"logits": torch.zeros(2, 4, 8, dtype=torch.long)}, InvalidArgumentError, "`logits` must be floating-point"),
        ({"labels": [[1, 2, 3, 4]] * 2}, TypeError, "`labels` must be a tensor"),
        ({"ignore_index": -100.5}, TypeError, "`ignore_index` must be an int"),
        ({"shift": "yes"}, TypeError, "`shift` must be a bool"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, words):
    args = {"logits": torch.zeros(2, 4, 8), "labels": torch.zeros(2, 4, dtype=torch.long), **kwargs}
    with pytest.raises(exc) as err:
        sequence_losses(**args)
    assert words in str(err.value) and "sequence_losses" in str(err.value)


@pytest.mark.parametrize("bad", [8, 40, -3], ids=["vocab", "past-vocab", "negative"])
def test_labels_outside_the_vocabulary_name_labels_the_vocabulary_and_ignore_index(bad):
    labels = torch.tensor([[1, 2, bad, -100], [0, 7, 3, 5]])
    with pytest.raises(InvalidArgumentError) as err:
        sequence_losses(torch.zeros(2, 4, 8), labels)
    message = str(err.value)
    assert message.startswith(f"sequence_losses(labels with values {bad}): `labels` must be token ids in [0, 8)")
    assert "or ignore_index (-100)" in message
    assert sequence_losses(torch.zeros(2, 4, 8), labels.clamp(min=0, max=7)).shape == (2,)  # in range: fine


class TaggedSequences(Dataset):
    """HF-style dict items whose first token tags the item's index; every third one is padded."""

    def __init__(self, n: int = 48, time: int = 12) -> None:
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, 256, (n, time), generator=gen)
        self.ids[:, 0] = torch.arange(n)
        self.mask = torch.ones(n, time, dtype=torch.long)
        self.mask[::3, time // 2 :] = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.ids[i].clone()}


@pytest.mark.parametrize("keep_steps", [False, True])
def test_data_pruning_trains_an_hf_causal_lm_on_dict_batches(tmp_path, keep_steps):
    pytest.importorskip("transformers")
    from lightning_green.testing.hf import tiny_hf_module

    class Checked(type(tiny_hf_module("llama", num_layers=1))):
        def training_step(self, batch, batch_idx):
            (dp,) = [cb for cb in self.trainer.callbacks if isinstance(cb, DataPruning)]
            assert batch["input_ids"][:, 0].tolist() == dp.batch_indices  # the batch holds the indices DataPruning says
            return super().training_step(batch, batch_idx)

    seed_everything(0)
    module = tiny_hf_module("llama", num_layers=1)
    module.__class__ = Checked
    loader = DataLoader(TaggedSequences(), batch_size=8, shuffle=True)
    dp = DataPruning(prune_ratio=0.5, anneal_fraction=0.25, keep_steps=keep_steps)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=4, limit_val_batches=0, callbacks=[dp], **QUIET)
    trainer.fit(module, train_dataloaders=loader)
    kept = [h["kept"] for h in dp.history]
    assert kept[0] == kept[3] == 48 and kept[1] < 48 and kept[2] < 48  # epoch 0 unscored, epoch 3 anneals
    assert torch.isfinite(dp.scores.values).all()  # every sequence, padded ones too, got a per-sequence score
    assert trainer.global_step == (4 * 6 if keep_steps else sum(-(-k // 8) for k in kept))


def test_the_hf_demo_without_data_pruning_optimises_the_hf_loss_even_with_padding():
    pytest.importorskip("transformers")
    from lightning_green.testing.hf import tiny_hf_module

    module = tiny_hf_module("llama", num_layers=1).eval()  # no dropout: the same forward twice
    ids, mask, labels = padded_batch()
    hf_labels = labels.masked_fill(mask == 0, -100)
    expected = module.model(input_ids=ids, attention_mask=mask, labels=hf_labels).loss
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with pytest.warns(UserWarning, match="self.trainer"):  # self.log outside a Trainer
        loss = module.training_step(batch, 0)
    assert torch.allclose(loss, expected, atol=1e-5)  # the mean over tokens, not over sequences
    per_sequence = reduce_sample_losses(module, sequence_losses(module(ids, mask), labels, mask))
    assert not torch.allclose(per_sequence, expected, atol=1e-3)  # what DataPruning's scores reduce would differ
