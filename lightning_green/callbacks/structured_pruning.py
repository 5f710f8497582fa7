"""StructuredPruning: iterative structured pruning during training that really shrinks the model."""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    SingleDeviceStrategy,
    Strategy,
)
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_green._internal.interrupts import interrupt_deferred
from lightning_green._internal.logging import log_metrics, log_step
from lightning_green._internal.packages import require_lightning_package
from lightning_green._internal.validation import (
    GreenRuntimeError,
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_number,
    check_optional_number,
    check_state_version,
    check_str_list,
    fail,
)
from lightning_green.events import workload_changed
from lightning_green.pruning.engine import ChannelPruner
from lightning_green.pruning.graph import count_macs_params
from lightning_green.pruning.history import STATE_VERSION, Architecture, rebuild_from_checkpoint, replay
from lightning_green.pruning.importance import IMPORTANCES, NEEDS_GRADIENTS
from lightning_green.pruning.llm import (
    LLMPruner,
    are_token_ids,
    find_hf_model,
    is_layer_drop,
    renumber_after_layer_drops,
)
from lightning_green.pruning.optim import ModuleSnapshot, OptimizerState, rebuild_ddp
from lightning_green.pruning.schedule import SCHEDULES, macs_fraction, prune_points, schedule_fraction, step_ratio
from lightning_green.pruning.verify import (
    Probe,
    describe,
    example_from_spec,
    example_spec,
    first_line,
    has_own_forward,
    probe_from_batch,
    prune_verified,
    quiet_forward,
    tensors_in,
)

__all__ = ["StructuredPruning"]


def _hf_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """A Hugging Face causal LM's logits (no KV cache: the check compares outputs, not cache objects)."""
    return model(input_ids=input_ids, use_cache=False).logits


log = logging.getLogger(__name__)

ImportanceName = Literal["magnitude-l1", "magnitude-l2", "taylor", "bn-scale", "lamp", "random", "activation"]
ScheduleName = Literal["linear", "cubic"]
Regularization = Literal["none", "group-norm", "bn-scale"]
_REGULARIZATIONS = ("none", "group-norm", "bn-scale")
#: Lightning's weight-averaging callbacks (``WeightAveraging``, e.g. ``EMAWeightAveraging``, from Lightning 2.6).
_AVERAGING = tuple(c for c in (StochasticWeightAveraging, getattr(pl.callbacks, "WeightAveraging", None)) if c)
_MODES = ("max", "min")
#: Criteria that look at a window of training batches before each prune (gradients, or activations of an HF LLM).
_WINDOWED = NEEDS_GRADIENTS | {"activation"}


class StructuredPruning(Callback):
    """Remove whole channels (and heads, hidden units) during training, so the model really gets smaller and faster.

    Unlike Lightning's ``ModelPruning``, which multiplies weights by masks, this callback uses Torch-Pruning's
    dependency graph to cut coupled channels out of every layer that shares them (residual adds, concatenations,
    depthwise and grouped convs, BatchNorm, LayerNorm, ``nn.MultiheadAttention``). Pruning is gradual: prunes at
    ``start_epoch``, every ``frequency`` epochs, up to ``end_epoch`` (or the same in optimizer steps with
    ``start_step``/``end_step``), each followed by fine-tuning, the amount per prune following a linear or cubic
    (Zhu & Gupta) schedule. The goal is either a share of channels (``pruning_ratio``) or a MAC reduction
    (``target_speedup`` = MACs dense / MACs pruned, torch-pruning's counter on the example input).

    Every prune is checked: right after cutting, the model runs once on the example input (no grad, in eval mode,
    then its modes, buffers — BatchNorm statistics — and the global random streams put back) and its output must
    have the structure and shapes it had before. A prune that fails (the forward raises, a shape changed: a
    ``view`` with a hard-coded width, a buffer torch-pruning could not follow) is undone exactly, the groups
    responsible are found by bisection and left whole (one warning names them and why), and the prune is done
    again without them; when nothing can be cut safely, pruning stops with a warning and training continues.
    Buffers and tensor attributes of the model's own modules whose size is a cut width (a positional encoding)
    are cut with it, and width attributes (``embed_dim``, ``d_model``, ``hidden_size``, ``head_dim``, ...) follow.

    The example input is, in this order: ``example_input``, the pruned module's ``example_input_array``, or the
    first training batch (its first element when the module takes that, else the batch itself; said once).
    A LightningModule without a ``forward`` of its own (its ``training_step`` calls a submodule) needs
    ``module=`` naming that submodule, with ``forward_fn`` when the submodule is not called with the batch alone.

    After each prune the optimizers and LR schedulers are rebuilt by the strategy (``configure_optimizers`` runs
    again), keeping the learning rates and scheduler state, and per-parameter state (momentum, Adam's moments,
    the step count) is carried over for the surviving channels. Under DDP rank 0 decides, the other ranks replay
    its decision and the DDP wrapper is rebuilt, so ranks stay identical. Frozen modules and the output layer are
    never cut; the module's train/eval modes and channels-last weights are kept. A compiled module
    (``trainer.fit(torch.compile(model))``, or a submodule compiled in ``configure_model``) compiles afresh after each
    prune (``torch.compiler.reset()``), so code for the old shapes neither piles up to dynamo's recompile limit nor
    leaves the rest of the fit running eagerly. Under manual optimization, a prune waits for the first batch whose
    start holds no gradients still to be stepped (a module accumulating over micro-batches itself loses none).

    The pruning history (layer names and channel indices, plain lists) is part of the checkpoint:
    ``Trainer.fit(ckpt_path=...)`` rebuilds the pruned architecture before the weights load, and
    :func:`lightning_green.pruning.load_pruned` does the same for inference. A checkpoint taken inside the
    ``importance_batches`` window before a prune also holds what the window gathered so far (its step count and, as
    tensors, the summed gradients for ``"taylor"`` — about one copy of the pruned module's weights — or the
    activation and Block Influence sums), so a resumed run prunes at the same steps as an uninterrupted one and
    keeps what was gathered before the interruption (only the window's remaining steps are still to come). With a
    checkpoint from another ``importance`` (or from a version without this record) the window is gathered afresh
    from the resume on, which moves that prune later.

    Logged to every logger after each prune: ``pruning/macs``, ``pruning/params``, ``pruning/speedup``,
    ``pruning/step``; other callbacks hear ``on_workload_changed`` with reason ``"pruning"``.

    Args:
        pruning_ratio: Share of channels to remove by the last prune, in (0, 1) — per layer, or over all layers with
            ``global_pruning``. Default 0.5 unless ``target_speedup`` is given.
        target_speedup: Instead of a ratio: prune until MACs dense / MACs pruned reaches this (> 1).
        importance: How channels are ranked: ``"magnitude-l1"``, ``"magnitude-l2"``, ``"taylor"`` (|w·∂L/∂w| with
            gradients summed over ``importance_batches`` optimizer steps: the first steps of the prune's epoch, or
            the steps just before a step-scheduled prune), ``"bn-scale"``, ``"lamp"``, ``"random"``, or for Hugging
            Face causal LMs ``"activation"`` (mean |activation| of each unit over the same window, as Minitron).
        schedule: ``"linear"`` or ``"cubic"`` progression of the goal over the prunes.
        start_epoch: Epoch (0-based) at whose start the first prune happens.
        end_epoch: Epoch of the last prune; ``None``: halfway from ``start_epoch`` to ``max_epochs``.
        start_step: Prune by optimizer steps instead: global step of the first prune (then give ``end_step``).
        end_step: Global step of the last prune; training that stops before it (``max_steps``) is warned about.
        frequency: Epochs (or steps) between prunes; the fine-tune window of each prune.
        global_pruning: Rank channels across layers (layers lose different shares) instead of within each layer.
        round_to: Channel counts after the last prune are multiples of this (e.g. 8 for fast kernels); earlier
            prunes are not rounded, so small layers are not floored by a whole multiple each time. Torch-Pruning
            rounds the kept channels down, so the last prune can go past ``target_speedup`` (the digits CNN: 2.8x
            for 2.5x, 3.7x for 3x); the history and ``pruning/speedup`` give the figure reached. Models with
            ``nn.MultiheadAttention`` are always rounded to its number of heads (``round_to`` must be a multiple).
            On a Hugging Face causal LM the residual width (one for the whole model) is a multiple at every prune (a
            dense width off any multiple is cut to one at the first), and the MLP width after the last one, also
            when an earlier prune already reached ``target_speedup``.
        ignored_layers: Module names or glob patterns (``"head.*"``) never cut (relative to ``module`` when it is
            given). The output layer is added automatically.
        max_layer_ratio: Largest share of a layer's dense channels that may be removed, in (0, 1).
        num_heads: For hand-written attention: name of each q/k/v (or fused qkv) ``nn.Linear`` → its number of
            heads, so every head loses the same dimensions.
        importance_batches: Optimizer steps before a prune whose gradients ``"taylor"`` accumulates, whose
            activations ``"activation"`` records, and (before the first prune) over which ``prune_layers`` measures
            each decoder layer's influence; such a prune happens after these steps, not at the epoch's start.
        regularization: Sparsity regularisation on the gradients until the last prune: ``"group-norm"``
            (DepGraph's group lasso) or ``"bn-scale"`` (network slimming, L1 on BN scales); ``"none"``.
        regularization_strength: Coefficient of the regulariser.
        monitor: Validation metric of the accuracy guard; ``None`` disables the guard.
        max_drop: Largest allowed worsening of ``monitor`` after a prune's fine-tune window; beyond it the prune is
            rolled back (model and optimizer state) and pruning stops.
        mode: ``"max"`` if a larger ``monitor`` is better (accuracy), ``"min"`` if smaller is (loss).
        verbose: Print one line per prune.
        prune_hidden: Hugging Face causal LMs only: also cut the residual width (embeddings, every norm,
            ``lm_head``; tied weights stay tied). MLP units and attention heads (whole KV groups) are always cut.
            While the LightningModule holds parameters outside its Hugging Face models (a value or reward head
            reading ``hidden_states``, which would keep the old width), the residual width is kept whole and a
            warning names those modules; a frozen teacher (another ``PreTrainedModel``) does not count.
        prune_layers: Hugging Face causal LMs only: remove this many whole decoder layers at the first prune, those
            whose output differs least from their input over the ``importance_batches`` before it (Block
            Influence, as ShortGPT and Minitron's depth pruning); width cuts then make up the rest of
            ``target_speedup`` (with ``pruning_ratio``, the widths lose that ratio as well). Every op of a layer
            goes, so the time and energy saved follow the MACs more closely than with width cuts alone. A layer
            whose block ``ignored_layers`` names is kept.
        module: Name of the submodule to prune (e.g. ``"model"``), traced on its own; ``None``: the LightningModule.
        example_input: Input of the pruned module for tracing, checks and MAC counts (a tensor, a tuple of
            positional arguments or a dict of keyword arguments). Python only (YAML cannot hold tensors).
        forward_fn: ``forward_fn(module, example)`` runs the pruned module on the example (e.g. on the first batch:
            ``lambda m, batch: m(batch[0], m.init_hidden(len(batch[0])))``) and returns its output, which must hold
            a tensor. A callable from Python, or its dotted import path (``"my_pkg.prune_utils.run_lstm"``) from
            YAML/the CLI.

    Hugging Face decoder-only causal LMs (Llama, Mistral, Qwen2, Qwen3, Phi-3, GPT-2) inside the LightningModule
    are recognised and cut by :class:`~lightning_green.pruning.llm.LLMPruner` on their known block structure (no
    graph tracing, no ``example_input_array`` needed): every layer keeps the same widths and the model's ``config``
    follows, so ``generate()`` and ``save_pretrained()`` work on the pruned model. Other HF architectures
    (mixture-of-experts, encoder-decoder, state-space, unknown attention) are refused in ``setup``.

    Raises:
        ValueError: An argument is out of range or inconsistent (the message names it and what is allowed); in
            ``setup``: an unsupported strategy (``ddp_spawn``, FSDP, DeepSpeed), a LightningModule without a
            ``forward`` and no ``module``, a ``module`` naming no submodule, an ``ignored_layers`` entry that
            matches no module; at fit start (or the first batch): an example input the module cannot take, a
            ``forward_fn`` whose output holds no tensor.
        TypeError: An argument has the wrong type.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_green.demos import DigitsCNN, DigitsDataModule
        >>> import tempfile
        >>> pruning = StructuredPruning(target_speedup=2.0, start_epoch=1, end_epoch=2, verbose=False)
        >>> trainer = Trainer(default_root_dir=tempfile.mkdtemp(), max_epochs=3, limit_train_batches=2,
        ...                   limit_val_batches=1, callbacks=[pruning], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(DigitsCNN(channels=[8, 16]), DigitsDataModule(batch_size=16))
        >>> pruning.speedup >= 2.0, len(pruning.history)
        (True, 2)
    """

    def __init__(
        self,
        pruning_ratio: float | None = None,
        target_speedup: float | None = None,
        importance: ImportanceName = "magnitude-l2",
        schedule: ScheduleName = "linear",
        start_epoch: int = 1,
        end_epoch: int | None = None,
        start_step: int | None = None,
        end_step: int | None = None,
        frequency: int = 1,
        global_pruning: bool = False,
        round_to: int | None = None,
        ignored_layers: list[str] | None = None,
        max_layer_ratio: float = 0.9,
        num_heads: dict[str, int] | None = None,
        importance_batches: int = 4,
        regularization: Regularization = "none",
        regularization_strength: float = 1e-4,
        monitor: str | None = None,
        max_drop: float | None = None,
        mode: Literal["max", "min"] = "max",
        verbose: bool = True,
        prune_hidden: bool = False,
        prune_layers: int = 0,
        module: str | None = None,
        example_input: Any = None,
        forward_fn: Callable[..., Any] | str | None = None,
    ) -> None:
        name = type(self).__name__
        check_optional_number(name, "pruning_ratio", pruning_ratio, gt=0, lt=1)
        check_optional_number(name, "target_speedup", target_speedup, gt=1)
        if pruning_ratio is not None and target_speedup is not None:
            fail(name, "pruning_ratio", pruning_ratio, "None when `target_speedup` is given (choose one goal)")
        check_choice(name, "importance", importance, (*IMPORTANCES, "activation"))
        check_choice(name, "schedule", schedule, SCHEDULES)
        check_number(name, "start_epoch", start_epoch, integer=True, ge=0)
        check_optional_number(name, "end_epoch", end_epoch, integer=True, ge=0)
        if end_epoch is not None and end_epoch < start_epoch:
            fail(name, "start_epoch", start_epoch, f"<= end_epoch ({end_epoch})")
        check_optional_number(name, "start_step", start_step, integer=True, ge=0)
        check_optional_number(name, "end_step", end_step, integer=True, ge=0)
        if (start_step is None) != (end_step is None):
            fail(name, "start_step", start_step, f"given together with `end_step` (end_step={end_step})")
        if start_step is not None and end_step is not None and end_step < start_step:
            fail(name, "start_step", start_step, f"<= end_step ({end_step})")
        if start_step is not None and end_epoch is not None:
            fail(name, "end_epoch", end_epoch, f"None with a step schedule (start_step={start_step}); choose one")
        if start_step is not None and start_epoch != 1:
            fail(name, "start_epoch", start_epoch, f"left at 1 with a step schedule (start_step={start_step})")
        check_number(name, "frequency", frequency, integer=True, ge=1)
        check_bool(name, "global_pruning", global_pruning)
        check_optional_number(name, "round_to", round_to, integer=True, ge=1)
        ignored_layers = check_str_list(name, "ignored_layers", ignored_layers)
        check_number(name, "max_layer_ratio", max_layer_ratio, gt=0, lt=1)
        if pruning_ratio is not None and not global_pruning and pruning_ratio > max_layer_ratio:
            fail(name, "pruning_ratio", pruning_ratio, f"<= max_layer_ratio ({max_layer_ratio}) without global pruning")
        if num_heads is not None and (
            not isinstance(num_heads, dict)
            or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
                for k, v in num_heads.items()
            )
        ):
            fail(name, "num_heads", num_heads, "None or a dict of module name -> number of heads (int >= 1)", TypeError)
        check_number(name, "importance_batches", importance_batches, integer=True, ge=1)
        check_choice(name, "regularization", regularization, _REGULARIZATIONS)
        check_number(name, "regularization_strength", regularization_strength, gt=0)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            fail(name, "monitor", monitor, "None or the name of a logged validation metric", TypeError)
        check_optional_number(name, "max_drop", max_drop, ge=0)
        if (monitor is None) != (max_drop is None):
            fail(name, "max_drop", max_drop, f"given together with `monitor` (monitor={monitor!r})")
        check_choice(name, "mode", mode, _MODES)
        check_bool(name, "verbose", verbose)
        check_bool(name, "prune_hidden", prune_hidden)
        check_number(name, "prune_layers", prune_layers, integer=True, ge=0)
        if module is not None and (not isinstance(module, str) or not module):
            fail(name, "module", module, "None or the name of a submodule (e.g. 'model')", TypeError)
        if example_input is not None and not tensors_in(example_input):
            fail(name, "example_input", example_input, "None or a tensor, a tuple or a dict of tensors", TypeError)
        forward = _resolve_forward_fn(name, forward_fn)

        self.pruning_ratio = 0.5 if pruning_ratio is None and target_speedup is None else pruning_ratio
        self.target_speedup = target_speedup
        self.importance = importance
        self.schedule = schedule
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.start_step = start_step
        self.end_step = end_step
        self.frequency = frequency
        self.importance_batches = importance_batches
        self.regularization = regularization
        self.regularization_strength = regularization_strength
        self.monitor = monitor
        self.max_drop = max_drop
        self.mode = mode
        self.verbose = verbose
        self.prune_hidden = prune_hidden
        self.prune_layers = prune_layers
        self._global_pruning = global_pruning
        self.module = module
        self.example_input = example_input
        self.forward_fn = forward_fn
        self._forward = forward
        self.pruner = ChannelPruner(
            owner=name,
            importance=importance,
            global_pruning=global_pruning,
            round_to=round_to,
            ignored_layers=ignored_layers,
            max_layer_ratio=max_layer_ratio,
            num_heads=num_heads,
        )

        self._reset_progress()
        # Per run.
        self._points: list[int] = []
        self._stage = "fit"
        self._saved_points: list[int] | None = None  # the restored checkpoint's prune points (load_state_dict)
        self._restored_now = False  # this fit restored a checkpoint's state
        self._grad_sums: dict[str, torch.Tensor] = {}
        self._grad_steps = 0
        self._window_batches = 0
        #: Whether training reached the next prune's point (it then waited for its window) since the last prune.
        self._due_reached = False
        #: Activation records of a window restored from a checkpoint: (by key, keys kept on the host), until placed.
        self._restored_stats: tuple[dict[str, torch.Tensor], set[str]] | None = None
        self._names: dict[torch.Tensor, str] = {}
        self._regularizer: Any = None
        self._snapshot: tuple[ModuleSnapshot, OptimizerState] | None = None
        self._restore_hook: tuple[pl.LightningModule, Any] | None = None
        #: Set in `setup` when the module holds a Hugging Face causal LM: it is cut by its known structure.
        self._llm: LLMPruner | None = None
        self._probe: Probe | None = None
        self._expected: Any = None
        self._batches = 0
        self._regularized_at = -1
        self._told = False
        #: Prune points already said to be past the end of training (in ``setup``/``on_train_start``).
        self._late_points: set[int] = set()
        #: Manual optimization: a backward ran since the last optimizer step (its gradients are still to be stepped).
        self._backward_pending = False
        # Manual optimization: step hooks on the Trainer's optimizers (their ids), re-registered when they are rebuilt.
        self._step_hooks: tuple[tuple[int, ...], list[Any]] = ((), [])

    # ------------------------------------------------------------------------------------------------ public
    @property
    def speedup(self) -> float:
        """MACs of the dense model / MACs now (1.0 before the first prune)."""
        if not self.dense_macs or not self.macs:
            return 1.0
        return self.dense_macs / self.macs

    @property
    def by_steps(self) -> bool:
        """Whether prunes are scheduled by optimizer steps rather than epochs."""
        return self.start_step is not None

    @property
    def finished(self) -> bool:
        """No prune is left: all done, or stopped by the accuracy guard."""
        return self.stopped or (bool(self._points) and self.prunes_done >= len(self._points))

    def _reset_progress(self) -> None:
        """No prune yet: the state of a new callback (and of a fit of another module without a checkpoint)."""
        # Progress (checkpointed). `history` holds the prunes that cut something (what replay needs);
        # `prunes_done` counts the schedule's points passed, including those whose target was already met.
        self.history: list[dict[str, Any]] = []
        self.prunes_done = 0
        # `pruning_ratio` mode: the share of the dense channels the prunes so far were to remove (the schedule's
        # value at the last prune), so each prune cuts from there to its own point, whatever schedule cut before
        # (a resume or a second fit with other arguments or another max_epochs). None: not recorded (older state).
        self._ratio_done: float | None = 0.0
        self.stopped = False
        self.rollbacks: list[dict[str, Any]] = []
        self.dense_macs: float | None = None
        self.dense_params: int | None = None
        self.dense_channels: dict[str, list[int]] | None = None
        self.macs: float | None = None
        self.params: int | None = None
        self._guard: dict[str, Any] | None = None
        #: Modules whose cut failed the check of a prune → why (checkpointed; they are never cut again).
        self.left_whole: dict[str, str] = {}
        self._example_spec: Any = None
        self.pruner.left_whole = set()
        #: The pruned module's architecture when this callback first set it up (what its history starts from), so
        #: a checkpoint saved before later prunes still loads into the module: (module, architecture).
        self._architecture: tuple[torch.nn.Module, Architecture] | None = None

    # ------------------------------------------------------------------------------------------------- setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        name = type(self).__name__
        require_lightning_package(name, trainer, "re-makes Lightning's DDP wrapper and checks its strategy classes")
        self._stage, self._saved_points, self._restored_now = stage, None, False
        arch = self._architecture
        progress = self.history or self.prunes_done or self.stopped or self.rollbacks or self.left_whole
        if stage == "fit" and progress and arch is not None and arch[0] is not self._target(pl_module):
            # The prunes so far were of another module (the callback reused for a new model, e.g. after a
            # fast_dev_run): this one starts dense. A checkpoint restored next brings its own history.
            rank_zero_info(
                f"{name}: a new module: its pruning starts over (the prunes and the stop so far were of another "
                "module)."
            )
            self._reset_progress()
        self._llm = self._llm_pruner(self._target(pl_module), training=stage == "fit", root=pl_module)
        if self._llm is None and self.module is None and self._forward is None and not has_own_forward(pl_module):
            raise InvalidArgumentError(
                f"{name}: {type(pl_module).__name__} has no `forward` of its own, so it cannot be traced; name the "
                "submodule to prune with `module=` (e.g. StructuredPruning(module='model')), or give `forward_fn=`."
            )
        target = self._target(pl_module)
        if self._llm is None:
            for arg, value, used in (
                ("importance", "activation", self.importance == "activation"),
                ("prune_hidden", True, self.prune_hidden),
                ("prune_layers", self.prune_layers, self.prune_layers > 0),
            ):
                if used:
                    fail(name, arg, value, "used with a Hugging Face causal LM only; this module holds none")
            self.pruner.check_module(target)
            self.pruner.forward_fn = self._forward
            self.pruner.left_whole = set(self.left_whole)
        self._install_restore_hook(pl_module)
        if stage != "fit":
            return
        self._check_strategy(trainer.strategy)
        if self.by_steps:
            self._points = prune_points(self.start_step, self.end_step, self.frequency)  # type: ignore[arg-type]
        else:
            end = self.end_epoch
            if end is None:
                if trainer.max_epochs is None or trainer.max_epochs < 0:
                    fail(name, "end_epoch", None, "an int when the Trainer has no `max_epochs`")
                end = max(self.start_epoch, self.start_epoch + (trainer.max_epochs - self.start_epoch) // 2)
            self._points = prune_points(self.start_epoch, end, self.frequency)
            if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= self._points[-1]:
                late = [p for p in self._points if p >= trainer.max_epochs]
                rank_zero_warn(
                    f"{name}: the last prune is at epoch {self._points[-1]} but max_epochs={trainer.max_epochs}; "
                    f"the prunes at epoch {_brief_list(late)} will not happen, so the goal may not be reached (each "
                    "prune cuts to its own point of the schedule), and the last prunes get no fine-tuning."
                )
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, ModelCheckpoint) and cb.save_weights_only:
                rank_zero_warn(
                    f"{name}: ModelCheckpoint(save_weights_only=True) leaves the pruning history out of the "
                    "checkpoint; such checkpoints cannot be reloaded into the pruned architecture."
                )
            if isinstance(cb, _AVERAGING):
                # Both copy the LightningModule in their own `setup`, before any prune (and before a resumed fit
                # rebuilds the pruned shapes), then average tensors of other shapes: a crash whenever they start.
                raise InvalidArgumentError(
                    f"{name}: {type(cb).__name__} cannot run in the same fit: it copies the model when the fit sets "
                    "up, before any prune, and then averages weights of other shapes. Prune first, then average in "
                    "a second fit on the pruned model (`load_pruned`)."
                )

    def _check_strategy(self, strategy: Strategy) -> None:
        name = type(self).__name__
        if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy)):
            fail(
                name,
                "strategy",
                type(strategy).__name__,
                "a single device or 'ddp' (sharded parameters cannot be cut channel-wise)",
            )
        if isinstance(strategy, DDPStrategy):
            if _spawns_workers(strategy):
                fail(
                    name,
                    "strategy",
                    "ddp_spawn",
                    "'ddp' (use Trainer(strategy=\"ddp\")): spawned workers copy their pruned weights back into the "
                    "parent's unpruned model, which fails on shape",
                )
            return
        if not isinstance(strategy, SingleDeviceStrategy):
            fail(name, "strategy", type(strategy).__name__, "a single device or 'ddp'")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown on this path: take the hook off the user's module and free the snapshots.
        self._release()

    def _stepped(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._backward_pending = False

    def _watch_steps(self, trainer: pl.Trainer) -> None:
        """Under manual optimization: a step of any of the Trainer's optimizers ends the pending gradients.

        Also one the module makes on the raw optimizer (``self.optimizers(use_pl_optimizer=False)``), which runs no
        Lightning hook: torch's public per-optimizer step hook, put on the optimizers again when a prune rebuilt them.
        """
        if trainer.lightning_module.automatic_optimization:
            return
        ids = tuple(id(opt) for opt in trainer.optimizers)
        if ids != self._step_hooks[0]:
            for hook in self._step_hooks[1]:
                hook.remove()
            self._step_hooks = (ids, [opt.register_step_post_hook(self._stepped) for opt in trainer.optimizers])

    def _release(self) -> None:
        for hook in self._step_hooks[1]:
            hook.remove()
        self._step_hooks = ((), [])
        if self._restore_hook is not None:
            module, hook = self._restore_hook
            if module.__dict__.get("on_load_checkpoint") is hook:
                del module.__dict__["on_load_checkpoint"]
            self._restore_hook = None
        self._reset_window()
        self._regularizer = None
        self._snapshot = None
        if self._llm is not None:
            self._llm.release()
        self._probe = None
        self._expected = None

    # --------------------------------------------------------------------------------------------- fit hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches, self._regularized_at = 0, -1
        self._backward_pending = False
        self._watch_steps(trainer)
        target = self._target(pl_module)
        self._capture(target)
        if self._llm is not None:  # an HF causal LM is counted and checked on token ids of its own
            self._start(trainer, pl_module, self._llm.example(target, self.example_input), "token ids")
        elif self.example_input is not None:
            self._start(trainer, pl_module, self.example_input, "example_input")
        elif getattr(target, "example_input_array", None) is not None:
            self._start(trainer, pl_module, target.example_input_array, "example_input_array")
        # else: the first training batch (on_train_batch_start)
        self._place_window(target)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._due_reached = False
        # An epoch schedule past max_epochs was said in `setup` (not again at the end).
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        self._late_points = (
            {p for p in self._points if p >= max_epochs} if not self.by_steps and max_epochs is not None else set()
        )
        self._check_resumed_schedule(trainer)
        if not self.by_steps or self.finished:
            return
        # As the epoch schedule warns in `setup`; the number of optimizer steps is only known once the data is.
        try:
            total = trainer.estimated_stepping_batches  # max_steps, or max_epochs x the batches of an epoch
        except MisconfigurationException:  # a GradientAccumulationScheduler that changes the accumulation over epochs
            total = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps >= 0 else math.inf
        late = [p for p in self._points[self.prunes_done :] if p >= total]
        self._late_points = set(late)
        if late:
            rank_zero_warn(
                f"{type(self).__name__}: the last prune is at step {self._points[-1]} but training stops after "
                f"{int(total)} optimizer steps (max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs}); "
                f"{len(late)} of the {len(self._points)} prunes (at steps {_brief_list(late)}) will not happen, so the "
                "goal will not be reached. Lower `end_step` or raise `max_steps`."
            )

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, example: Any, source: str) -> None:
        """Check that the pruned module takes ``example``, then count the dense model and build the regulariser."""
        name = type(self).__name__
        target = self._target(pl_module)
        x = trainer.precision_plugin.convert_input(move_data_to_device(example, pl_module.device))
        probe = Probe(x, _hf_logits if self._llm is not None else self._forward, source)
        what = type(target).__name__
        try:
            out = quiet_forward(self._checked(target), probe)
        except Exception as exc:
            if source == "example_input_array" and self.module is None and self._forward is None:
                raise InvalidArgumentError(
                    f"{name}: {what}'s forward does not take its `example_input_array` ({first_line(exc)}); name the "
                    "submodule to prune with `module=` (e.g. StructuredPruning(module='model')), or give "
                    "`example_input=` / `forward_fn=`."
                ) from exc
            arg = "forward_fn" if self._forward is not None else "module"
            arg = "example_input" if self.example_input is not None and self._forward is None else arg
            raise InvalidArgumentError(
                f"{name}({arg}={_brief(getattr(self, arg))}): {what} cannot be run on {source} ({first_line(exc)}); "
                f"`{arg}` must name a module and an input that it takes (`module`, `example_input`, `forward_fn`)."
            ) from exc
        if not tensors_in(out):
            arg = "forward_fn" if self._forward is not None else "module"
            raise InvalidArgumentError(
                f"{name}({arg}={_brief(getattr(self, arg))}): `{arg}` must give an output that holds a tensor; "
                f"{what} returned a {type(out).__name__}."
            )
        self._probe, self._expected = probe, describe(out)
        if source.startswith("the first training batch"):
            self._example_spec = example_spec(x)
        if self.dense_macs is None:
            self.dense_macs, self.dense_params = self._count(target, x)
            self.dense_channels = self._engine.channels(target, x)
        self.macs, self.params = self._count(target, x)
        self._sync_layers_dropped(pl_module)
        if self._records and not self.finished:
            self._llm.observe(target)  # type: ignore[union-attr]
        self._names = {p: n for n, p in target.named_parameters()}
        self._build_regularizer(target, x)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._watch_steps(trainer)
        if self._records:
            assert self._llm is not None
            if self.finished:
                self._llm.release()  # no prune left: the forward hooks go (a no-op once they are gone)
            else:
                lead = self.importance_batches if self.by_steps else 0
                self._llm.recording = (
                    self._grad_steps < self.importance_batches
                    and self._position(trainer) >= self._points[self.prunes_done] - lead
                )
        self._batches += 1
        if self._probe is None:
            self._start_from_batch(trainer, pl_module, batch)
        if self.finished or batch_idx % max(1, trainer.accumulate_grad_batches):
            return
        if self._position(trainer) < self._points[self.prunes_done]:
            return
        self._due_reached = True  # the next prune is due (it may still wait for its window)
        if self._windowed and self._grad_steps < self.importance_batches:
            if self._grad_steps == 0 and self._window_batches >= self.importance_batches * max(
                1, trainer.accumulate_grad_batches
            ):
                self._no_gradients()
            self._window_batches += 1
            return
        if self._gradients_pending(pl_module):
            # The module accumulates gradients over batches itself (manual optimization): a prune now would drop
            # those of the micro-batches before this one. It happens at the first batch after their step.
            log.debug(
                "prune %d deferred: gradients accumulated by manual optimization are pending", self.prunes_done + 1
            )
            return
        # Ctrl-C is held until the prune (or the guard's rollback) is whole: cut in half, the model and its pruning
        # history disagree and the on-exception checkpoint cannot be loaded.
        with interrupt_deferred(f"{type(self).__name__}'s prune {self.prunes_done + 1}"):
            self._guard_check(trainer, pl_module, forced=True)
            if not self.stopped:
                self._prune(trainer, pl_module)
        if self.finished and self._llm is not None:
            self._llm.release()  # the last prune (or a stop): no activation hook needs to run on this batch

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._llm is not None:
            self._llm.recording = False  # a validation run after this batch is not training data

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not pl_module.automatic_optimization:
            self._backward_pending = True

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._backward_pending = False
        if self.finished:
            return
        if self._regularizer is not None and self._regularized_at != self._batches:
            # Once per batch, not once per optimizer (both kinds were built with reg=regularization_strength).
            self._regularized_at = self._batches
            self._regularizer.regularize(self._target(pl_module))
        if not self._windowed or self._grad_steps >= self.importance_batches:
            return
        lead = self.importance_batches if self.by_steps else 0
        if self._position(trainer) < self._points[self.prunes_done] - lead:
            return
        if self.importance not in NEEDS_GRADIENTS:  # the module's forward hooks recorded this batch
            self._grad_steps += 1
            return
        named = [
            (name, p.grad.detach())
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and (name := self._names.get(p)) is not None
        ]
        # One device sync for all gradients: a non-finite one is left out of the sums.
        norms = torch._foreach_norm([g for _, g in named], float("inf")) if named else []
        finite = torch.stack(norms).isfinite().tolist() if named else []
        for (name, grad), ok in zip(named, finite, strict=True):
            if ok:
                acc = self._grad_sums.get(name)
                self._grad_sums[name] = grad.clone() if acc is None else acc.add_(grad)
        self._grad_steps += 1

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._guard is None:
            return
        self._guard["validations"] = self._guard.get("validations", 0) + 1
        if self._position(trainer) >= self._guard["check_at"]:
            with interrupt_deferred(f"{type(self).__name__}'s accuracy check"):
                self._guard_check(trainer, pl_module, forced=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        left = [p for p in self._points[self.prunes_done :] if p not in self._late_points]  # not said yet
        if self._points and not self.finished and left:
            # The fit stopped first (max_steps, max_time, early stopping), or each prune waited for a window of
            # `importance_batches` batches that the epochs were too short to fill before the schedule ran out.
            unit = "step" if self.by_steps else "epoch"
            window = (
                f" (each prune first waits for `importance_batches={self.importance_batches}` batches)"
                if self._windowed and self._due_reached
                else ""
            )
            said = (
                f"{type(self).__name__}: training ended after {trainer.global_step} optimizer steps with "
                f"{self.prunes_done} of the {len(self._points)} prunes done; the prunes at {unit} "
                f"{_brief_list(left)} did not happen{window}"
            )
            if self.target_speedup is not None and self.speedup >= self.target_speedup * (1 - 1e-9):
                rank_zero_info(
                    f"{said}; the goal was reached before them ({self.speedup:.2f}x fewer MACs than dense, target "
                    f"{self.target_speedup:g}x)."
                )
            else:
                rank_zero_warn(f"{said}, so the goal was not reached ({self.speedup:.2f}x fewer MACs than dense).")
        if self._guard is not None:
            rank_zero_warn(
                f"{type(self).__name__}: training ended inside the fine-tune window of prune "
                f"{self._guard['prune']}; the accuracy guard did not check it."
            )

    # -------------------------------------------------------------------------------------------------- core
    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        k = self.prunes_done + 1
        n = len(self._points)
        name = type(self).__name__
        assert self._probe is not None
        probe, x = self._probe, self._probe.example
        target = self._target(pl_module)
        baseline = self._metric(trainer, k) if self.monitor is not None else None
        if self.monitor is not None:
            # The whole LightningModule and every optimizer (also of parameters outside `module`), in host memory.
            self._snapshot = (ModuleSnapshot(pl_module), OptimizerState.capture(trainer, pl_module, clone=True))
        before = OptimizerState.capture(trainer, pl_module)
        gradients = self._grad_sums if self.importance in NEEDS_GRADIENTS else None
        if gradients is not None:
            gradients = {name: g / max(1, self._grad_steps) for name, g in gradients.items()}
            if not gradients:
                self._no_gradients()

        strategy = trainer.strategy
        payload: dict[str, Any] | None = None
        error: BaseException | None = None
        if strategy.global_rank == 0:

            def cut(ignored: frozenset[str]) -> Any:
                saved = set(self.pruner.left_whole)
                self.pruner.left_whole |= ignored
                try:
                    if self.target_speedup is not None:
                        macs = self.dense_macs * macs_fraction(self.target_speedup, self.schedule, k, n)  # type: ignore[operator]
                        return self._engine.prune(
                            target,
                            x,
                            target_macs=macs,
                            dense_channels=self.dense_channels,
                            gradients=gradients,
                            final=k == n,
                        )
                    ratio = self._step_ratio(k, n)
                    return self._engine.prune(
                        target,
                        x,
                        ratio=ratio,
                        dense_channels=self.dense_channels,
                        gradients=gradients,
                        final=k == n,
                        goal=self.pruning_ratio * schedule_fraction(self.schedule, k, n),
                    )
                finally:
                    self.pruner.left_whole = saved

            try:
                # An HF causal LM is cut by its known structure, group kinds across all layers alike: a failed check
                # (or a failed MAC count of the cut model) undoes the prune, its config included, and stops pruning
                # (no groups to bisect).
                roots = (lambda r: []) if self._llm is not None else (lambda r: [e[0] for e in r.entries])
                verified = prune_verified(self._checked(target), probe, cut, roots=roots, expected=self._expected)
                result = verified.result
                check = {"left_whole": verified.left_whole, "check_s": verified.check_s, "checks": verified.checks}
                if result is None:
                    payload = {"entries": [], "needed": True, "unsafe": True, "why": verified.error, **check}
                else:
                    lineage = result.lineage
                    payload = {
                        "entries": result.entries,
                        "macs": result.macs,
                        "params": result.params,
                        "needed": result.needed,
                        "reached": result.reached,
                        **check,
                    }
            except Exception as exc:  # shared with the other ranks so that none waits forever
                error = exc
                payload = {"error": f"{type(exc).__name__}: {exc}"}
        if strategy.world_size > 1:
            payload = strategy.broadcast(payload, src=0)
        assert payload is not None
        if "error" in payload:
            if error is not None:
                raise error
            raise RuntimeError(f"{type(self).__name__}: rank 0 failed to prune: {payload['error']}")
        self.prunes_done = k
        left = payload.get("left_whole") or {}
        if left:
            self.left_whole.update(left)
            self.pruner.left_whole |= set(left)
            reasons = "; ".join(f"{m!r}: {why}" for m, why in left.items())
            rank_zero_warn(
                f"{name}: prune {k}/{n}: cutting {', '.join(map(repr, left))} broke the model, so the prune was undone "
                f"and they are left whole ({reasons})."
            )
        if payload.get("unsafe") or (left and not payload["entries"]):
            self._reset_window()
            self._snapshot = None
            self.stopped = True
            rank_zero_warn(
                f"{name}: prune {k}/{n}: nothing left can be cut without breaking the model"
                + (f" (the cut was undone: {payload['why']})" if payload.get("why") and not left else "")
                + "; pruning stops at "
                f"{self.speedup:.2f}x and training continues."
            )
            return
        if not payload["entries"]:
            self._reset_window()
            self._snapshot = None
            if payload["needed"]:
                rank_zero_warn(
                    f"{type(self).__name__}: prune {k}/{n} removed no channel: every layer is ignored, frozen, an "
                    "output, at `max_layer_ratio`, or invisible to the traced graph (e.g. behind a .detach() in "
                    "forward)."
                )
            elif self.verbose:
                goal = "its target" if self.target_speedup is not None else "past its point of the schedule"
                rank_zero_info(
                    f"{type(self).__name__}: prune {k}/{n}: already at {self.speedup:.2f}x, {goal}; nothing cut."
                )
            return
        if strategy.global_rank != 0:
            lineage = replay(target, x, payload["entries"], self._forward)
            for p in target.parameters():
                p.grad = None

        rebuild_ddp(trainer)
        if self._llm is not None:  # the layers after a removed one carry their state under their new names
            before = before.renamed(lambda named: self._renumbered(pl_module, named, payload["entries"]))
        dropped = before.restore(trainer, pl_module, carry=lineage.carry)
        if dropped:
            log.warning("%d parameters restart their optimizer state after the prune", dropped)
        self.macs, self.params = float(payload["macs"]), int(payload["params"])
        # A target_speedup prune says nothing of the share of channels cut (a later resume by ratio: unknown).
        if self.target_speedup is None:
            self._ratio_done = self.pruning_ratio * schedule_fraction(self.schedule, k, n)
        else:
            self._ratio_done = None
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "entries": payload["entries"],
                "macs": self.macs,
                "params": self.params,
                "check_s": float(payload.get("check_s", 0.0)),
            }
        )
        if baseline is not None:
            check_at = self._position(trainer) + self.frequency - (0 if self.by_steps else 1)
            self._guard = {
                "prune": k,
                "baseline": baseline,
                "check_at": check_at,
                "validations": 0,
                "monitor": self.monitor,
                "mode": self.mode,
            }
        self._after_change(trainer, pl_module)
        if self.target_speedup is not None and not payload["reached"]:
            rank_zero_warn(
                f"{type(self).__name__}: prune {k}/{n} reached {self.speedup:.2f}x, short of its target: the layers "
                "hit `max_layer_ratio` or could not be cut further."
            )
        dropped_layers = any(is_layer_drop(e) for e in payload["entries"])
        if dropped_layers and self.target_speedup is not None and self.speedup > 1.1 * self.target_speedup:
            rank_zero_warn(
                f"{type(self).__name__}(prune_layers={self.prune_layers}): removing the decoder layers alone gave "
                f"{self.speedup:.2f}x fewer MACs, more than target_speedup={self.target_speedup}; remove fewer layers "
                "or raise the target."
            )
        if self.verbose:
            unit = "step" if self.by_steps else "epoch"
            rank_zero_info(
                f"{type(self).__name__}: prune {k}/{n} at {unit} {self._position(trainer)}: "
                f"MACs {_si(self.macs)} ({self.speedup:.2f}x fewer than dense), params {_si(self.params)} "
                f"(dense {_si(self.dense_params or 0)}); checked in {1e3 * float(payload.get('check_s', 0.0)):.0f} ms"
            )

    def _after_change(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Bookkeeping after the architecture changed (a prune or a rollback): log, tell the others, reset."""
        target = self._target(pl_module)
        self._names = {p: n for n, p in target.named_parameters()}
        self._sync_layers_dropped(pl_module)
        self._reset_window()
        _reset_compiled(pl_module)
        if self._probe is not None:
            self._build_regularizer(target, self._probe.example)
        metrics = {
            "pruning/macs": float(self.macs or 0.0),
            "pruning/params": float(self.params or 0),
            "pruning/speedup": self.speedup,
            "pruning/step": float(len(self.history)),
        }
        log_metrics(trainer, metrics, step=log_step(trainer))  # Lightning's step: lines up with the loss
        workload_changed(
            trainer,
            "pruning",
            self,
            macs=self.macs,
            params=self.params,
            speedup=self.speedup,
            step=len(self.history),
        )

    def _guard_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, forced: bool) -> None:
        """Compare ``monitor`` with its value before the last prune; roll the prune back if it fell too far."""
        guard = self._guard
        if guard is None:
            return
        self._guard = None
        name = type(self).__name__
        if forced and not guard.get("validations"):
            rank_zero_warn(
                f"{name}: no validation ran in the fine-tune window of prune {guard['prune']}; "
                f"`monitor` ({self.monitor!r}) could not be checked."
            )
            self._snapshot = None
            return
        value = self._metric(trainer, guard["prune"])
        drop = (guard["baseline"] - value) if self.mode == "max" else (value - guard["baseline"])
        rollback = drop > self.max_drop  # type: ignore[operator]
        if trainer.world_size > 1:
            rollback = bool(trainer.strategy.broadcast(rollback, src=0))
        if not rollback:
            self._snapshot = None
            return
        if self._snapshot is None:
            rank_zero_warn(
                f"{name}: {self.monitor} fell by {drop:.4g} after prune {guard['prune']} (more than max_drop="
                f"{self.max_drop}), but the run was resumed inside its fine-tune window, so there is no copy to roll "
                "back to; pruning stops here."
            )
            self.stopped = True
            return
        module_snapshot, optimizer_snapshot = self._snapshot
        self._snapshot = None
        module_snapshot.restore(pl_module)
        if self._llm is not None:
            self._llm.structure(pl_module).sync_config()
        rebuild_ddp(trainer)
        now = OptimizerState.capture(trainer, pl_module)
        OptimizerState(optimizer_snapshot.states, now.groups, now.schedulers).restore(trainer, pl_module)
        undone = self.history.pop()
        self.stopped = True
        self.rollbacks.append(
            {"prune": guard["prune"], "baseline": guard["baseline"], "value": value, "entries": len(undone["entries"])}
        )
        self.macs = self.history[-1]["macs"] if self.history else self.dense_macs
        self.params = self.history[-1]["params"] if self.history else self.dense_params
        self._after_change(trainer, pl_module)
        rank_zero_info(
            f"{name}: {self.monitor} went from {guard['baseline']:.4g} to {value:.4g} after prune {guard['prune']} "
            f"(worse by more than max_drop={self.max_drop}): rolled it back and stopped pruning at "
            f"{self.speedup:.2f}x."
        )

    # --------------------------------------------------------------------------------------------- helpers
    def _check_resumed_schedule(self, trainer: pl.Trainer) -> None:
        """Warn when the schedule met at the fit's start (a resume, another fit) cannot do what it was set to."""
        name, unit = type(self).__name__, "step" if self.by_steps else "epoch"
        position = self._position(trainer)
        due = [p for p in self._points[self.prunes_done :] if p <= position]
        short = (
            self.speedup < 0.98 * self.target_speedup
            if self.target_speedup is not None
            else self._ratio_done is not None and self._ratio_done < self.pruning_ratio - 1e-9  # type: ignore[operator]
        )
        # A checkpoint of this very schedule resumes as the uninterrupted run goes on (prunes waiting for their
        # importance window are due the same way there): nothing to say. Old checkpoints do not save their points.
        changed = not self._restored_now or (self._saved_points is not None and self._saved_points != self._points)
        if not changed or self.stopped or not short:
            return
        if len(due) > 1:
            rank_zero_warn(
                f"{name}: at {unit} {position}, {len(due)} prunes are already due (at {unit}s {_brief_list(due)}): "
                "they run one after another, with no fine-tuning between them. Give a schedule that starts here "
                "(`start_epoch`/`start_step`) to spread them out."
            )
        if self.history and self.prunes_done >= len(self._points):
            goal = f"target_speedup={self.target_speedup}" if self.target_speedup is not None else "pruning_ratio"
            rank_zero_warn(
                f"{name}: the checkpoint's run made {self.prunes_done} prunes and this schedule has "
                f"{len(self._points)} prune points, so none is left: {goal} is not reached ({self.speedup:.2f}x fewer "
                "MACs). Give prune points after the ones done (a later `end_epoch`/`end_step`)."
            )

    def _say_guard_dropped(self, watched: tuple[Any, Any]) -> None:
        if self._stage != "fit":  # validate/test/predict check nothing
            return
        assert self._guard is not None
        rank_zero_warn(
            f"{type(self).__name__}: the checkpoint's accuracy guard of prune {self._guard['prune']} watched "
            f"monitor={watched[0]!r} (mode={watched[1]!r}); this run has monitor={self.monitor!r} "
            f"(mode={self.mode!r}), so that prune is not checked."
        )

    def _step_ratio(self, k: int, n: int) -> float:
        """Share of the current channels prune ``k`` of ``n`` removes: from what was cut so far to its point."""
        if self._ratio_done is None:  # a state from before `ratio_done` was saved: its prunes followed this schedule
            return step_ratio(self.pruning_ratio, self.schedule, k, n)
        after = self.pruning_ratio * schedule_fraction(self.schedule, k, n)
        return max(0.0, 1.0 - (1.0 - after) / (1.0 - self._ratio_done))  # 0: already there, nothing to cut

    def _position(self, trainer: pl.Trainer) -> int:
        return trainer.global_step if self.by_steps else trainer.current_epoch

    @property
    def _records(self) -> bool:
        """Whether forward hooks record training batches before a prune (activations, Block Influence)."""
        if self._llm is None:
            return False
        return self.importance == "activation" or self.prune_layers > self._llm.layers_dropped

    def _sync_layers_dropped(self, pl_module: pl.LightningModule, llm: LLMPruner | None = None) -> None:
        """Tell the LLM pruner how many decoder layers are gone since the dense model.

        A new pruner (after a resume, in another stage, after a rollback) and ranks that replay rank 0's cut would
        not know otherwise.
        """
        llm = llm or self._llm
        if llm is None or not self.dense_channels or "layers" not in self.dense_channels:
            return
        now = len(llm.structure(self._target(pl_module)).blocks())
        llm.layers_dropped = max(0, int(self.dense_channels["layers"][0]) - now)

    def _renumbered(self, pl_module: pl.LightningModule, named: Any, entries: list) -> dict[str, Any]:
        """``named`` (by parameter name in ``pl_module``) with the layers after removed ones at their new numbers."""
        assert self._llm is not None
        s = self._llm.structure(self._target(pl_module))
        prefix = ".".join(p for p in (self.module, s.path, s.layers) if p) + "."
        return renumber_after_layer_drops(named, entries, prefix, len(s.blocks()))

    def _gradients_pending(self, pl_module: pl.LightningModule) -> bool:
        """Under manual optimization: a backward since the last optimizer step left gradients to be stepped.

        Lightning's ``accumulate_grad_batches`` is refused with manual optimization, so a module that accumulates
        over micro-batches does it itself; its batch index says nothing of where a step boundary is.
        """
        if pl_module.automatic_optimization or not self._backward_pending:
            return False
        return any(p.grad is not None for p in pl_module.parameters())

    @property
    def _windowed(self) -> bool:
        """Whether each prune waits for ``importance_batches`` training batches (gradients or hooks record them)."""
        return self.importance in _WINDOWED or self._records

    @property
    def _engine(self) -> ChannelPruner | LLMPruner:
        return self._llm if self._llm is not None else self.pruner

    def _count(self, target: torch.nn.Module, x: Any) -> tuple[float, int]:
        return self._llm.count(target, x) if self._llm is not None else count_macs_params(target, x, self._forward)

    def _checked(self, target: torch.nn.Module) -> torch.nn.Module:
        """What each prune is checked on: the HF model itself for a causal LM (on its logits), else ``target``."""
        return self._llm.structure(target).model if self._llm is not None else target

    def _llm_pruner(
        self, pl_module: torch.nn.Module, training: bool = True, root: torch.nn.Module | None = None
    ) -> LLMPruner | None:
        """An :class:`LLMPruner` when ``pl_module`` holds a Hugging Face model it can cut (refuses the others).

        ``root``: the whole LightningModule, where a frozen teacher sharing the config object may sit.
        """
        if find_hf_model(pl_module) is None:
            return None
        name = type(self).__name__
        if self._global_pruning:
            fail(name, "global_pruning", True, "False for a Hugging Face causal LM: every layer keeps the same widths")
        if self.regularization != "none":
            fail(name, "regularization", self.regularization, "'none' for a Hugging Face causal LM")
        if self.forward_fn is not None:  # never called: the model is counted and checked on token ids of its own
            fail(name, "forward_fn", self.forward_fn, "None for a Hugging Face causal LM (it runs on token ids)")
        x = self.example_input
        if x is not None and not are_token_ids(x):  # described, not repr'd: a tensor's repr spans lines
            given = (
                f"<{str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}>"
                if torch.is_tensor(x)
                else f"<{type(x).__name__}>"
            )
            raise InvalidArgumentError(
                f"{name}(example_input={given}): `example_input` must be None or token ids (an integer tensor of "
                "shape (batch, sequence)) for a Hugging Face causal LM."
            )
        p = self.pruner
        llm = LLMPruner(
            owner=name,
            importance=self.importance,
            round_to=p.round_to,
            ignored_layers=p.ignored_layers,
            max_layer_ratio=p.max_layer_ratio,
            num_heads=p.num_heads,
            prune_hidden=self.prune_hidden,
            prune_layers=self.prune_layers,
        )
        llm.scope = root  # a frozen teacher beside `module=` may share the student's config object
        self._sync_layers_dropped(pl_module, llm)  # e.g. `validate` after a fit that removed layers
        llm.check_module(pl_module, training=training)
        if self.pruning_ratio is not None:
            llm.check_ratio(pl_module, self.pruning_ratio)
        return llm

    def _target(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        """The module being pruned: ``module`` names a submodule of ``pl_module``, else ``pl_module`` itself."""
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError:
            names = [n for n, _ in pl_module.named_children()]
            fail(
                type(self).__name__,
                "module",
                self.module,
                f"None or the name of a submodule of {type(pl_module).__name__} (its children: {names})",
            )
            raise  # unreachable: fail() raises

    def _start_from_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """No example input was given: take it from the first training batch, and say so once."""
        name = type(self).__name__
        target = self._target(pl_module)
        x = trainer.precision_plugin.convert_input(batch)
        try:
            probe, what = probe_from_batch(target, x, self._forward)
        except ValueError as exc:
            arg = "forward_fn" if self._forward is not None else "module" if self.module is not None else None
            owner = f"{name}({arg}={_brief(getattr(self, arg))})" if arg else name
            raise InvalidArgumentError(
                f"{owner}: {type(target).__name__} has no `example_input_array` and does not take the first training "
                f"batch ({exc}); give `example_input=`, or `forward_fn=` to call it on the batch."
            ) from exc
        if not self._told:
            self._told = True
            rank_zero_info(
                f"{name}: {type(target).__name__} has no `example_input_array`; tracing it on the first training batch "
                f"({what})."
            )
        self._start(trainer, pl_module, probe.example, probe.source)

    def _metric(self, trainer: pl.Trainer, prune: int) -> float:
        value = trainer.callback_metrics.get(self.monitor)  # type: ignore[arg-type]
        if value is None:
            available = sorted(trainer.callback_metrics)
            raise GreenRuntimeError(
                f"{type(self).__name__}(monitor={self.monitor!r}): `monitor` was not logged before prune {prune} "
                f"(logged: {available}). Log it in validation_step and let a validation run before the first prune."
            )
        return float(value)

    def _no_gradients(self) -> None:
        fail(
            type(self).__name__,
            "importance",
            self.importance,
            f"a criterion without gradients (e.g. 'magnitude-l2'): no gradients reached the model in the "
            f"{self.importance_batches} optimizer steps before prune {self.prunes_done + 1}",
            GreenRuntimeError,  # found mid-fit: a runtime state, not a bad argument
        )

    def _reset_window(self) -> None:
        if self._llm is not None:
            self._llm.reset_activations()
        self._grad_sums = {}
        self._grad_steps = 0
        self._window_batches = 0
        self._due_reached = False
        self._restored_stats = None

    def _window_state(self) -> dict[str, Any] | None:
        """What the importance window before the next prune has gathered so far (host tensors), for a resume."""
        if not (self._grad_steps or self._window_batches):
            return None
        # The LLM pruner's activation and Block Influence sums; read here so the checkpoint holds one window record.
        stats = self._llm.recorded if self._llm is not None else {}
        return {
            "importance": self.importance,
            "steps": self._grad_steps,
            "batches": self._window_batches,
            "gradients": {k: v.detach().to("cpu", copy=True) for k, v in self._grad_sums.items()},
            "activations": {k: v.detach().to("cpu", copy=True) for k, v in stats.items()},
            "on_host": sorted(k for k, v in stats.items() if v.device.type == "cpu"),
        }

    def _load_window(self, window: Any) -> None:
        """Continue the window a checkpoint was taken in, so the prune happens at the step it would have."""
        self._reset_window()
        if not window:
            return
        if window.get("importance") != self.importance:  # another criterion now: gather its window afresh
            log.debug("checkpoint window of importance %r, now %r: restarted", window["importance"], self.importance)
            return
        self._grad_steps = int(window.get("steps", 0))
        self._window_batches = int(window.get("batches", 0))
        self._grad_sums = dict(window.get("gradients") or {})
        self._restored_stats = (dict(window.get("activations") or {}), set(window.get("on_host") or []))

    def _place_window(self, target: torch.nn.Module) -> None:
        """Move a restored window's sums to the devices they are added on (after the activation hooks are set)."""
        if self._grad_sums:
            params = dict(target.named_parameters())
            self._grad_sums = {k: v.to(params[k].device) if k in params else v for k, v in self._grad_sums.items()}
        if self._restored_stats is not None and self._llm is not None:
            stats, on_host = self._restored_stats
            device = next(target.parameters()).device
            self._llm.restore_recorded({k: v if k in on_host else v.to(device) for k, v in stats.items()})
        self._restored_stats = None

    def _build_regularizer(self, target: torch.nn.Module, x: Any) -> None:
        self._regularizer = None
        if self.regularization != "none" and not self.finished:
            self._regularizer = self.pruner.regularizer(target, x, self.regularization, self.regularization_strength)

    def _install_restore_hook(self, pl_module: pl.LightningModule) -> None:
        """Rebuild the pruned architecture when a checkpoint loads, before Lightning loads its weights.

        Lightning restores model weights before any callback restore hook runs; the LightningModule's own
        ``on_load_checkpoint`` is the last call before, and Lightning looks it up on the instance at call time.
        """
        if self._restore_hook is not None and self._restore_hook[0] is pl_module:
            return
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self._rebuild(pl_module, checkpoint)
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]
        self._restore_hook = (pl_module, on_load_checkpoint)

    def _capture(self, target: torch.nn.Module) -> None:
        """Keep ``target``'s architecture, what its history starts from, unless kept already.

        Called where the module is complete but not cut yet in this run: before the first restore of a checkpoint
        and at the fit's start (after ``configure_model``).
        """
        if self._architecture is not None and self._architecture[0] is target:
            return
        try:
            self._architecture = (target, Architecture(target))
        except Exception as exc:  # an attribute deepcopy cannot take: only earlier checkpoints are affected
            log.debug(
                "%s: no copy of the architecture (%s); a checkpoint saved before a later prune will not load into "
                "the pruned module",
                type(self).__name__,
                first_line(exc),
            )
            self._architecture = None

    def _rebuild(self, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        target = self._target(pl_module)
        self._capture(target)
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        example = self.example_input
        if example is None:
            example = getattr(target, "example_input_array", None)
        arch = self._architecture[1] if self._architecture is not None and self._architecture[0] is target else None
        rebuilt = rebuild_from_checkpoint(
            pl_module,
            checkpoint,
            example,
            state=state,
            owner=type(self).__name__,
            forward_fn=self._forward,
            architecture=arch,
        )
        if rebuilt and self.macs is not None:  # `speedup` of the model as loaded (a fit recounts at its start)
            if self._llm is not None:
                example = self._llm.example(target, self.example_input)
            elif example is None and (state or {}).get("example"):
                example = example_from_spec(state["example"])  # type: ignore[index]
            try:
                self.macs, self.params = self._count(target, move_data_to_device(example, pl_module.device))
            except Exception as exc:  # a count is a report figure: never fail a restore over it
                log.debug("%s: no MAC count after the restore (%s)", type(self).__name__, first_line(exc))
                self.macs = None

    # --------------------------------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "history": [dict(event) for event in self.history],
            "prunes_done": self.prunes_done,
            "stopped": self.stopped,
            "rollbacks": [dict(r) for r in self.rollbacks],
            "dense_macs": self.dense_macs,
            "dense_params": self.dense_params,
            "dense_channels": {k: list(v) for k, v in (self.dense_channels or {}).items()},
            "guard": dict(self._guard) if self._guard else None,
            "module": self.module,
            "left_whole": dict(self.left_whole),
            "example": self._example_spec,
            "window": self._window_state(),
            "ratio_done": self._ratio_done,
            "points": list(self._points),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_version(type(self).__name__, state_dict, supported=STATE_VERSION)
        self.history = [dict(event) for event in state_dict.get("history", [])]
        self.prunes_done = int(state_dict.get("prunes_done", len(self.history)))
        self.stopped = bool(state_dict.get("stopped", False))
        done = state_dict.get("ratio_done", None if self.history else 0.0)
        self._ratio_done = None if done is None else float(done)
        points = state_dict.get("points")
        self._saved_points = None if points is None else [int(p) for p in points]
        self._restored_now = True
        self.rollbacks = [dict(r) for r in state_dict.get("rollbacks", [])]
        self.dense_macs = state_dict.get("dense_macs")
        self.dense_params = state_dict.get("dense_params")
        channels = state_dict.get("dense_channels") or None
        self.dense_channels = {k: list(v) for k, v in channels.items()} if channels else None
        guard = state_dict.get("guard")
        self._guard = dict(guard) if guard else None
        watched = (self._guard.get("monitor", self.monitor), self._guard.get("mode", self.mode)) if guard else None
        if self._guard is not None and watched != (self.monitor, self.mode):
            # Its baseline is a value of the checkpoint's metric: another metric (or direction) cannot be judged by it.
            self._say_guard_dropped(watched)
            self._guard = None
        self.left_whole = dict(state_dict.get("left_whole") or {})
        self.pruner.left_whole = set(self.left_whole)
        self._example_spec = state_dict.get("example")
        self._load_window(state_dict.get("window"))


def _brief_list(values: list[int], n: int = 6) -> str:
    """``values`` joined with commas, the middle elided past ``n`` of them."""
    shown = values if len(values) <= n else [*values[: n // 2], "...", *values[-(n // 2) :]]
    return ", ".join(map(str, shown))


def _brief(value: Any) -> str:
    """A one-line repr: tensors by shape and dtype, callables by name."""
    if value is None or isinstance(value, str):
        return repr(value)
    if callable(value) and not torch.is_tensor(value):
        return getattr(value, "__qualname__", type(value).__name__)
    spec = example_spec(value)
    return repr(spec) if len(repr(spec)) <= 120 else repr(spec)[:117] + "..."


def _resolve_forward_fn(owner: str, forward_fn: Any) -> Callable[..., Any] | None:
    """``forward_fn`` as a callable: itself, or what its dotted import path names (from YAML)."""
    if forward_fn is None or callable(forward_fn):
        return forward_fn
    allowed = "None, a callable `forward_fn(module, example)`, or the dotted import path of one ('pkg.mod.fn')"
    if not isinstance(forward_fn, str) or "." not in forward_fn:
        fail(owner, "forward_fn", forward_fn, allowed, TypeError)
    path, _, attr = forward_fn.rpartition(".")
    try:
        found = getattr(importlib.import_module(path), attr)
    except (ImportError, AttributeError) as exc:
        fail(owner, "forward_fn", forward_fn, f"{allowed}; it does not import ({first_line(exc)})")
    if not callable(found):
        fail(owner, "forward_fn", forward_fn, f"{allowed}; it names a {type(found).__name__}")
    return found


def _compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` runs compiled code: ``trainer.fit(torch.compile(model))`` or a compiled submodule."""
    # Lightning's `from_compiled` keeps the compile settings on the module it unwraps (no public accessor); a module
    # compiled in `configure_model` (or before) stays an OptimizedModule among the submodules.
    if getattr(module, "_compiler_ctx", None):
        return True
    optimized = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    optimized = getattr(optimized, "OptimizedModule", None)
    return optimized is not None and any(isinstance(m, optimized) for m in module.modules())


def _reset_compiled(pl_module: torch.nn.Module) -> None:
    """After the shapes changed, let a compiled module compile afresh (``torch.compiler.reset()``).

    Every prune leaves compiled code for the old shapes in dynamo's cache, where it counts toward the recompile
    limit (8 by default): after a few prunes dynamo stops compiling the forward and silently runs it eagerly for
    the rest of the fit. The reset clears the process's compiled code; the next forward compiles for the new shapes.
    """
    if not _compiled(pl_module):
        return
    torch.compiler.reset()
    log.info("the model is compiled and its shapes changed: torch.compiler.reset(), the next forward compiles afresh")


def _spawns_workers(strategy: DDPStrategy) -> bool:
    # Lightning has no public flag for DDP's start method: "ddp_spawn", "ddp_fork" and "ddp_notebook" are
    # DDPStrategy with a multiprocessing launcher, which copies the workers' weights back into the parent's model
    # at the end (and that model was never pruned). Only "ddp" (a subprocess script launcher) keeps them apart.
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    return isinstance(strategy.launcher, _MultiProcessingLauncher)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"
