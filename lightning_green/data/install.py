"""Putting the pruning sampler into the training DataLoader: the one place that touches Lightning internals.

Lightning has no public hook between "the user's ``train_dataloader`` returned a loader" and "the fit loop uses
it". Lightning itself re-instantiates the user's loader there to inject a ``DistributedSampler``; DataPruning does
the same with its own sampler through the same code path:

- ``trainer.fit_loop._data_source`` is where Lightning keeps what ``fit()`` was given (a module's or datamodule's
  ``train_dataloader`` hook, or loaders passed directly); wrapping its ``dataloader`` method covers all three and
  runs inside Lightning's ``_replace_dunder_methods`` context, so user DataLoader subclasses re-instantiate too.
- ``lightning.pytorch.utilities.data._update_dataloader`` is Lightning's re-instantiation with a new sampler. For
  ``DataPruning(keep_steps=True)`` the batch size changes too: its two halves (``_get_dataloader_init_args_and_kwargs``
  and ``_reinstantiate_wrapped_cls``, which make up ``_update_dataloader`` throughout Lightning 2.x; run here on 2.6)
  are called with ``batch_size`` replaced in between.

- ``trainer._accelerator_connector.use_distributed_sampler`` is the Trainer's ``use_distributed_sampler`` (no public
  accessor), read as Lightning's data connector reads it, to refuse per-rank loaders under DDP.

All are private (checked on Lightning 2.1–2.6); ``tests/callbacks/test_data_pruning.py`` checks they still exist
and apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from lightning_green._internal.validation import InvalidArgumentError

__all__ = ["install_train_sampler", "rebuild_with_sampler"]


def rebuild_with_sampler(loader: DataLoader, sampler: Sampler, batch_size: int | None = None) -> DataLoader:
    """``loader`` re-created by Lightning with ``sampler`` (and ``batch_size``, if given) in place of its own.

    Workers, collate function and the rest are kept.

    Raises:
        InvalidArgumentError: The loader's class cannot be re-created with another ``batch_size``.
    """
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities import data as pl_data  # private, see the module docstring
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    if batch_size is None or batch_size == loader.batch_size:
        return pl_data._update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
    args, kwargs = pl_data._get_dataloader_init_args_and_kwargs(loader, sampler, mode=RunningStage.TRAINING)
    # Copies: for a loader created in a Lightning hook these are its saved arguments, which must stay as the user gave
    # them (a loader returned again next epoch is re-created from them).
    args, kwargs = tuple(args), dict(kwargs)
    names = tuple(getattr(loader, "__pl_saved_arg_names", ()))[: len(args)]
    if "batch_size" in names:  # given positionally to a DataLoader created in a Lightning hook
        at = names.index("batch_size")
        args = (*args[:at], batch_size, *args[at + 1 :])
    else:
        kwargs["batch_size"] = batch_size
    try:
        rebuilt = pl_data._reinstantiate_wrapped_cls(loader, *args, **kwargs)
    except (TypeError, MisconfigurationException) as err:
        rebuilt, reason = None, str(err).strip()
    if rebuilt is None or rebuilt.batch_size != batch_size:
        reason = reason if rebuilt is None else f"it came back with batch_size={rebuilt.batch_size}"
        raise InvalidArgumentError(
            f"DataPruning(keep_steps=True): the training {type(loader).__name__} cannot be re-created with a smaller "
            f"batch_size ({reason}); it needs a `batch_size` argument that Lightning can replace (a keyword, or "
            "positional in a DataLoader created in a Lightning hook), or use keep_steps=False."
        )
    return rebuilt


def install_train_sampler(
    trainer: pl.Trainer, owner: str, make_sampler: Callable[[DataLoader], Sampler]
) -> Callable[[], None]:
    """Make every training DataLoader the fit loop requests use ``make_sampler(loader)``; returns the undo.

    Raises:
        InvalidArgumentError: Lightning no longer has the internals used here (name the version).
    """
    source = getattr(trainer.fit_loop, "_data_source", None)  # private, see the module docstring
    if source is None or not callable(getattr(source, "dataloader", None)):
        raise InvalidArgumentError(
            f"{owner}: this Lightning version ({pl.__version__}) has no fit_loop._data_source.dataloader; "
            "lightning-green supports Lightning 2.1-2.6."
        )
    original = source.dataloader

    def dataloader() -> Any:
        loader = original()
        # Lightning's flag (no public accessor; read as its own data connector does, default True).
        distributed = getattr(trainer._accelerator_connector, "use_distributed_sampler", True)
        check_train_loader(
            owner, loader, world_size=trainer.world_size, rank=trainer.global_rank, distributed_sampler=distributed
        )
        sampler = make_sampler(loader)
        rebuilt = rebuild_with_sampler(loader, sampler, getattr(sampler, "epoch_batch_size", None))
        if rebuilt.batch_size is not None and callable(getattr(sampler, "use_batch_size", None)):
            sampler.use_batch_size(rebuilt.batch_size)  # batches map to indices with the size really in use
        return rebuilt

    source.dataloader = dataloader

    def undo() -> None:
        if source.__dict__.get("dataloader") is dataloader:
            del source.dataloader

    return undo


def check_train_loader(
    owner: str, loader: Any, world_size: int = 1, rank: int = 0, distributed_sampler: bool = True
) -> None:
    """Refuse what data pruning cannot drive.

    That is: not one DataLoader, an IterableDataset, a custom batch sampler, a sampler of the user's own, batches that
    may arrive out of order, a loader that restores its own position in an epoch, or (``distributed_sampler=False``,
    Lightning's ``use_distributed_sampler``, on several ranks) a loader of each rank's own data.
    """
    if not isinstance(loader, DataLoader):
        raise InvalidArgumentError(
            f"{owner}: the training data is a {type(loader).__name__}; data pruning needs exactly one "
            "torch.utils.data.DataLoader over a map-style dataset (return one from train_dataloader())."
        )
    if isinstance(loader.dataset, IterableDataset):
        raise InvalidArgumentError(
            f"{owner}: the training DataLoader's dataset is an IterableDataset ({type(loader.dataset).__name__}); "
            "data pruning needs a map-style dataset (with __len__ and __getitem__) so it can skip samples by index."
        )
    if callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None)):
        # Lightning restores such a loader's position in a resumed epoch (e.g. torchdata's StatefulDataLoader), and
        # DataPruning's sampler restores its own: the batches already run would be skipped twice.
        raise InvalidArgumentError(
            f"{owner}: the training loader is a {type(loader).__name__}, which saves and restores its own position in "
            "an epoch; data pruning resumes an epoch through its own sampler, so use a torch.utils.data.DataLoader."
        )
    if loader.batch_size is None:
        what = (
            "batch_size=None (the dataset yields whole batches)"
            if loader.batch_sampler is None
            else f"a custom batch_sampler ({type(loader.batch_sampler).__name__})"
        )
        raise InvalidArgumentError(
            f"{owner}: the training DataLoader has {what}; data pruning needs batch_size=... with an ordinary "
            "sampler (or shuffle=True) so that it can skip single samples."
        )
    if loader.num_workers > 0 and getattr(loader, "in_order", True) is False:
        raise InvalidArgumentError(
            f"{owner}: the training DataLoader has in_order=False, so its workers' batches may arrive out of order "
            "and data pruning could not tell which samples each batch holds; use in_order=True (the default)."
        )
    sampler = loader.sampler
    plain = type(sampler) is SequentialSampler or (
        type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(loader.dataset)  # type: ignore[arg-type]
    )
    # A DistributedSampler of the user's own (use_distributed_sampler=False) is replaced by the pruning sampler,
    # which shards the same way, unless it shards for another world.
    ours = (getattr(sampler, "num_replicas", None), getattr(sampler, "rank", None)) == (world_size, rank)
    plain = plain or (type(sampler) is DistributedSampler and ours)
    if plain and world_size > 1 and not distributed_sampler and type(sampler) is not DistributedSampler:
        # Each rank's loader is its own (the user sharded the data, or every rank is meant to see all of it), while
        # data pruning shards one dataset over the ranks by index and merges the ranks' scores by index.
        raise InvalidArgumentError(
            f"{owner}: Trainer(use_distributed_sampler=False) on {world_size} ranks with a {type(sampler).__name__}: "
            "each rank's loader is its own, but data pruning shards one dataset over the ranks and merges their scores "
            "by sample index. Give every rank the whole training set and let Lightning shard it "
            "(use_distributed_sampler=True, the default), or shard it with your own "
            f"DistributedSampler(num_replicas={world_size}, rank=<global rank>)."
        )
    if not plain:
        what = type(sampler).__name__
        if isinstance(sampler, RandomSampler):
            what += f"(replacement={sampler.replacement}, num_samples={sampler.num_samples})"
        elif isinstance(sampler, DistributedSampler):
            what += f"(num_replicas={sampler.num_replicas}, rank={sampler.rank}; the run has {world_size} rank(s))"
        raise InvalidArgumentError(
            f"{owner}: the training DataLoader has its own sampler ({what}); data pruning draws each epoch's samples "
            "from the whole dataset itself, so it would train on samples that sampler leaves out or weighs "
            "differently. Pass a dataset of just the training samples (torch.utils.data.Subset) with shuffle=True "
            "or False, or remove DataPruning."
        )
