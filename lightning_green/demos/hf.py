"""A Hugging Face causal language model as a LightningModule, on the standard library's own source (bytes).

:class:`HFCausalLM` wraps any ``transformers`` ``AutoModelForCausalLM``: built from a config of one of the
decoder-only families lightning-green knows (random initialisation, no download), from a ``config`` dict, or loaded
from a local folder with ``from_pretrained`` for users with weights. It trains on
:class:`~lightning_green.demos.StdlibTextDataModule` (bytes: vocabulary 256) or on any datamodule whose batches are
Hugging Face style dicts.

Batches are Hugging Face style dicts with ``input_ids``, ``attention_mask`` and ``labels`` (``labels`` are the
``input_ids``, the model shifts them, ``-100`` is ignored): ``StdlibTextDataModule(batch_format="causal_lm")`` serves
them, so callbacks (an :class:`~lightning_green.EnergyMonitor` counting tokens from the attention mask) see them too.
Plain ``(x, y)`` byte windows are accepted and read as such dicts.

``transformers`` is imported only when a model is built (it is the optional ``[hf]`` extra).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Mapping
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_number,
    check_optional_number,
    fail,
)
from lightning_green.data.losses import active_data_pruning, sequence_losses
from lightning_green.demos._data import check_demo_data, size_example_to_windows
from lightning_green.demos.gpt import VOCAB_SIZE, adamw_cosine, attention_kernels, log_nll
from lightning_green.pruning.history import LoadsPrunedCheckpoints
from lightning_green.pruning.verify import first_line

__all__ = ["FAMILIES", "Family", "HFCausalLM", "causal_lm_config", "to_causal_lm_batch"]

Family = Literal["llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3"]
FAMILIES: tuple[str, ...] = get_args(Family)

IGNORE_INDEX = -100  # Hugging Face's label for "no loss here"

#: Size and count fields of the families' configs → smallest value (``None`` where transformers fills one in).
_SIZE_FIELDS: dict[str, int] = {
    "vocab_size": 1,
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "intermediate_size": 1,
    "head_dim": 1,
    "max_position_embeddings": 2,
    "original_max_position_embeddings": 2,
    "sliding_window": 1,
    "n_embd": 1,
    "n_layer": 1,
    "n_head": 1,
    "n_inner": 1,
    "n_positions": 2,
}
_MAY_BE_NONE = ("head_dim", "sliding_window", "n_inner")


def _require_transformers(owner: str) -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{owner} needs the Hugging Face `transformers` package: pip install 'lightning-green[hf]'."
        ) from err
    return transformers


def causal_lm_config(
    family: str,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 256,
    vocab_size: int = VOCAB_SIZE,
    tie_word_embeddings: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    owner: str = "causal_lm_config",
) -> Any:
    """A ``transformers`` config of ``family`` with the given sizes (the family's own field names are filled in).

    ``num_kv_heads`` (grouped-query attention) applies where the family has it (not GPT-2); ``None`` is one KV head
    per query head. ``intermediate_size`` ``None`` is ``4 * hidden_size``. ``tie_word_embeddings`` ``None`` keeps the
    family's default (GPT-2 ties, the others do not). ``overrides`` sets any other field of the family's config class
    (names it does not have are refused; sizes and counts must be positive ints that fit together, and the head width
    follows overridden sizes unless ``head_dim`` is given). Token ids: no BOS/EOS (bytes have none), padding id 0
    (the NUL byte).

    Raises:
        ValueError: An unknown family, sizes that do not fit together, an override the config does not have, or one
            whose value it refuses (the message names ``config``, the field, its value and what is allowed).

    Example:
        >>> cfg = causal_lm_config("llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
        >>> type(cfg).__name__, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
        ('LlamaConfig', 2, 16, 256, 256)
    """
    check_choice(owner, "family", family, FAMILIES)
    check_number(owner, "num_heads", num_heads, integer=True, ge=1)
    check_number(owner, "hidden_size", hidden_size, integer=True, ge=num_heads)
    if hidden_size % num_heads:
        fail(owner, "hidden_size", hidden_size, f"a multiple of num_heads ({num_heads})")
    check_number(owner, "num_layers", num_layers, integer=True, ge=1)
    check_optional_number(owner, "num_kv_heads", num_kv_heads, integer=True, ge=1)
    if num_kv_heads is not None and num_heads % num_kv_heads:
        fail(owner, "num_kv_heads", num_kv_heads, f"a divisor of num_heads ({num_heads})")
    if num_kv_heads is not None and family == "gpt2" and num_kv_heads != num_heads:
        allowed = f"None or num_heads ({num_heads}) for gpt2 (no grouped-query attention)"
        fail(owner, "num_kv_heads", num_kv_heads, allowed)
    check_optional_number(owner, "intermediate_size", intermediate_size, integer=True, ge=1)
    check_number(owner, "max_positions", max_positions, integer=True, ge=2)
    check_number(owner, "vocab_size", vocab_size, integer=True, ge=1)
    if tie_word_embeddings is not None:
        check_bool(owner, "tie_word_embeddings", tie_word_embeddings)
    if overrides is not None and not isinstance(overrides, Mapping):
        fail(owner, "config", overrides, "None or a dict of config fields", TypeError)
    transformers = _require_transformers(owner)
    cls = transformers.AutoConfig.for_model(family).__class__
    kv = num_kv_heads if num_kv_heads is not None else num_heads
    inter = intermediate_size if intermediate_size is not None else 4 * hidden_size
    if family == "gpt2":
        fields: dict[str, Any] = {
            "n_embd": hidden_size,
            "n_layer": num_layers,
            "n_head": num_heads,
            "n_inner": inter,
            "n_positions": max_positions,
        }
    else:
        fields = {
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": kv,
            "intermediate_size": inter,
            "max_position_embeddings": max_positions,
        }
        if family in ("llama", "mistral", "qwen3"):
            fields["head_dim"] = hidden_size // num_heads  # Qwen3's default is 128 whatever the width
        if family == "phi3":
            fields["original_max_position_embeddings"] = max_positions
    fields.update(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    if tie_word_embeddings is not None:
        fields["tie_word_embeddings"] = tie_word_embeddings
    if overrides:
        # A config stores any unknown keyword as an attribute: check against the fields it really has (its own,
        # its constructor's, the rope parameters that transformers 5 accepts as legacy keywords, and `rope_scaling`,
        # its legacy name for `rope_parameters`, where the family has rotary embeddings).
        default = cls()
        known = set(vars(default)) | set(inspect.signature(cls.__init__).parameters)
        known |= set(getattr(default, "rope_parameters", None) or {})
        if getattr(default, "rope_parameters", None):  # a RoPE family: its legacy name for rope_parameters
            known.add("rope_scaling")
        unknown = sorted(str(k) for k in overrides if k not in known)
        if unknown:
            raise InvalidArgumentError(
                f"{owner}(config={dict(overrides)!r}): {cls.__name__} has no field(s) {unknown}; give fields "
                f"of {cls.__name__} (e.g. 'rms_norm_eps', 'initializer_range')."
            )
        _check_overrides(owner, family, overrides, fields)
        fields.update(overrides)
    try:
        return cls(**fields)
    except Exception as exc:
        if not overrides:
            raise
        raise _config_error(owner, overrides, exc, f"a value {cls.__name__} accepts") from exc


def _override_error(owner: str, overrides: Mapping[str, Any], key: str, allowed: str) -> InvalidArgumentError:
    """The house message for one bad ``config`` field: the dict, the key, its value and what is allowed."""
    return InvalidArgumentError(
        f"{owner}(config={dict(overrides)!r}): `config[{key!r}]` must be {allowed}; got {overrides[key]!r}."
    )


def _config_error(owner: str, overrides: Mapping[str, Any], exc: BaseException, allowed: str) -> InvalidArgumentError:
    """``exc`` from ``transformers`` building a config or model from ``overrides``, as an argument error.

    It names the one field given, or the one transformers named (its validation errors say ``field 'x'``), else all.
    """
    text = str(exc)
    named = [k for k in overrides if f"'{k}'" in text or f'"{k}"' in text] if len(overrides) > 1 else list(overrides)
    reason = " ".join(text.split())[:300]
    if len(named) == 1:
        key = named[0]
        return InvalidArgumentError(
            f"{owner}(config={dict(overrides)!r}): `config[{key!r}]` must be {allowed}; got {overrides[key]!r} "
            f"({type(exc).__name__}: {reason})."
        )
    return InvalidArgumentError(
        f"{owner}(config={dict(overrides)!r}): `config` must hold {allowed} in each of its fields "
        f"{sorted(map(str, overrides))}; transformers refused them ({type(exc).__name__}: {reason})."
    )


def _check_overrides(owner: str, family: str, overrides: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """Refuse size fields of ``overrides`` that are not positive ints or do not fit the sizes they meet.

    ``fields`` (the config built from the arguments) gets the head width the overridden sizes imply.
    """
    for key, value in overrides.items():
        least = _SIZE_FIELDS.get(key)
        if least is None or (value is None and key in _MAY_BE_NONE):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            extra = " or None" if key in _MAY_BE_NONE else ""
            raise _override_error(owner, overrides, key, f"an int >= {least}{extra}")
    merged = {**fields, **overrides}
    if family == "gpt2":
        hidden_key, heads_key, kv_key = "n_embd", "n_head", None
    else:
        hidden_key, heads_key, kv_key = "hidden_size", "num_attention_heads", "num_key_value_heads"
    hidden, heads = merged[hidden_key], merged[heads_key]
    if kv_key is not None and heads % merged[kv_key]:
        key = kv_key if kv_key in overrides else heads_key
        other = heads_key if key == kv_key else kv_key
        relation = "a divisor of" if key == kv_key else "a multiple of"
        raise _override_error(owner, overrides, key, f"{relation} {other} ({merged[other]})")
    if "head_dim" in overrides and overrides["head_dim"] is not None:
        return  # an explicit head width: the projections map heads * head_dim to hidden_size and back
    if hidden % heads:
        key = heads_key if heads_key in overrides else hidden_key
        other = hidden_key if key == heads_key else heads_key
        relation = "a divisor of" if key == heads_key else "a multiple of"
        hint = ", or give `config['head_dim']`" if "head_dim" in fields else ""
        raise _override_error(owner, overrides, key, f"{relation} {other} ({merged[other]}){hint}")
    if "head_dim" in fields and (hidden_key in overrides or heads_key in overrides):
        fields["head_dim"] = hidden // heads  # the head width follows overridden sizes, as with the arguments


def to_causal_lm_batch(batch: Any) -> Any:
    """A ``(input_ids, next_ids)`` pair of token tensors as a Hugging Face causal-LM dict; other batches unchanged.

    The dict has ``input_ids``, an all-ones ``attention_mask`` and ``labels`` = ``input_ids`` (the model shifts them).

    Example:
        >>> b = to_causal_lm_batch((torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])))
        >>> sorted(b), b["labels"].tolist(), b["attention_mask"].tolist()
        (['attention_mask', 'input_ids', 'labels'], [[1, 2, 3]], [[1, 1, 1]])
    """
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) and not t.is_floating_point() for t in batch)
        and batch[0].shape == batch[1].shape
    ):
        x = batch[0]
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    return batch


class HFCausalLM(LoadsPrunedCheckpoints, pl.LightningModule):
    """A Hugging Face ``AutoModelForCausalLM`` (built from a config, no download) trained on next-token prediction.

    The model is ``self.model`` (a standard ``transformers`` ``PreTrainedModel``: ``generate``, ``save_pretrained``
    work on it). It is built from ``family`` and the sizes (random initialisation), with ``config`` overriding any field
    of the family's config class; or, with ``pretrained_path``, loaded from that local folder (``from_pretrained``,
    float32 weights, nothing downloaded; ``family``, the sizes and ``config`` are then not used).

    Logged: ``train_loss`` (per step and epoch), ``val_loss`` (mean cross-entropy per predicted token, nats) and
    ``val_ppl`` (``exp(val_loss)``), the same for ``test_``. ``forward(input_ids, attention_mask=None)`` returns the
    logits, so ``example_input_array`` (token ids ``(1, seq_len)``, following the datamodule's ``seq_len``) serves MAC
    counts and pruning graphs. Batches: Hugging Face dicts (``input_ids``, ``attention_mask``, ``labels``; also a
    ``BatchEncoding``), as ``StdlibTextDataModule(batch_format="causal_lm")`` serves them; ``(x, y)`` byte windows
    are read as such dicts (callbacks then see the pairs: ``setup`` warns).

    Args:
        family: Model family whose config class builds the model.
        hidden_size: Width of the residual stream (a multiple of ``num_heads``).
        num_layers: Decoder blocks.
        num_heads: Query heads per block.
        num_kv_heads: Key/value heads (grouped-query attention; a divisor of ``num_heads``); ``None``: as many as
            query heads. GPT-2 has no grouping.
        intermediate_size: Hidden units of the MLP; ``None``: ``4 * hidden_size``.
        max_positions: Longest context; the datamodule's ``seq_len`` must not exceed it.
        tie_word_embeddings: Share the input embedding and ``lm_head``; ``None``: the family's default.
        config: Other fields of the family's config class (e.g. ``{"rope_theta": 10000.0}``); sizes and counts
            (``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ...) must be positive ints that fit together.
        pretrained_path: A local folder written by ``save_pretrained`` to load instead of building from a config.
        attn_implementation: ``"sdpa"`` (torch's fused attention) or ``"eager"`` (the reference implementation).
        lr: AdamW learning rate, cosine-annealed over ``max_epochs``.
        weight_decay: AdamW weight decay (on matrices other than embeddings).

    Raises:
        ValueError: An argument is out of range, a ``config`` field has a value the config or the model refuses,
            ``pretrained_path`` holds no ``config.json``, no weights, or no causal LM (an encoder such as BERT, whose
            logits read later tokens); in ``setup``: the datamodule's ``seq_len`` exceeds ``max_positions`` or its
            vocabulary exceeds the model's; in a step: token ids that are no integers, outside the vocabulary, or
            (GPT-2) longer than ``n_positions``.
        ImportError: ``transformers`` is not installed (``pip install 'lightning-green[hf]'``).

    Example:
        >>> model = HFCausalLM(family="llama", hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2)
        >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
        torch.Size([2, 16, 256])
        >>> type(model.model).__name__, model.model.config.num_key_value_heads
        ('LlamaForCausalLM', 2)
        >>> len(model.generate(b"def ", max_new_bytes=5))
        9
    """

    def __init__(
        self,
        family: Family = "llama",
        hidden_size: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        intermediate_size: int | None = None,
        max_positions: int = 256,
        tie_word_embeddings: bool | None = None,
        config: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        lr: float = 3e-3,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_choice(name, "attn_implementation", attn_implementation, ("sdpa", "eager"))
        check_number(name, "lr", lr, gt=0)
        check_number(name, "weight_decay", weight_decay, ge=0)
        if pretrained_path is not None and (not isinstance(pretrained_path, str) or not pretrained_path):
            fail(name, "pretrained_path", pretrained_path, "None or a folder path (str)", TypeError)
        self.save_hyperparameters()
        if pretrained_path is not None:
            self.model = self._load(pretrained_path, attn_implementation)
        else:
            cfg = causal_lm_config(
                family,
                hidden_size=hidden_size,
                num_layers=num_layers,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                intermediate_size=intermediate_size,
                max_positions=max_positions,
                tie_word_embeddings=tie_word_embeddings,
                overrides=config,
                owner=name,
            )
            transformers = _require_transformers(name)
            try:
                self.model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
            except Exception as exc:
                if not config:
                    raise
                raise _config_error(name, config, exc, "a value the model can be built with") from exc
        self.max_positions = _max_positions(self.model.config)
        self._ids_checked = False  # a batch of this stage passed the token-id range check on an accelerator
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        self.example_input_array = torch.zeros(1, min(64, self.max_positions), dtype=torch.long)

    def _load(self, path: str, attn_implementation: str) -> Any:
        name = type(self).__name__
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise InvalidArgumentError(
                f"{name}(pretrained_path={path!r}): no config.json there; give a folder written by a model's "
                "save_pretrained() (nothing is downloaded), or None to build the model from `family` and the sizes."
            )
        transformers = _require_transformers(name)
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation
            )
        except (ValueError, OSError) as exc:  # a model type without a causal LM, a save without its weights
            try:
                with open(os.path.join(path, "config.json")) as f:
                    mtype = json.load(f).get("model_type")
            except (OSError, ValueError, AttributeError):
                mtype = None
            why = (
                f"its model_type {mtype!r} has no causal-LM class in transformers"
                if isinstance(exc, ValueError) and "Unrecognized configuration class" in str(exc)
                else first_line(exc)[:300]
            )
            raise InvalidArgumentError(
                f"{name}(pretrained_path={path!r}): not loadable as a causal LM ({why}); give a folder written by a "
                "causal LM's save_pretrained(), weights included."
            ) from None
        _check_causal(name, path, model)
        return model.train()  # from_pretrained returns it in eval mode: no dropout, no activation checkpointing

    def setup(self, stage: str) -> None:
        """Size ``example_input_array`` like the datamodule's windows; refuse what the model cannot read."""
        self._ids_checked = False  # this stage's first batch on an accelerator is range-checked
        check_demo_data(
            self, ("token dicts", "token pairs"), "token data, e.g. lightning_green.demos.StdlibTextDataModule"
        )
        datamodule = getattr(self.trainer, "datamodule", None)
        name = type(self).__name__
        vocab = getattr(datamodule, "vocab_size", None)
        if isinstance(vocab, int) and vocab > self.model.config.vocab_size:
            raise InvalidArgumentError(
                f"{name}: the datamodule's vocab_size={vocab} is larger than the model's "
                f"({self.model.config.vocab_size}); build the model with a vocabulary of at least {vocab} tokens."
            )
        if getattr(datamodule, "batch_format", None) == "pairs":
            rank_zero_warn(
                f"{name}: the datamodule serves (x, y) pairs, which callbacks cannot count tokens in; give it "
                "batch_format='causal_lm' for Hugging Face dicts (input_ids, attention_mask, labels)."
            )
        size_example_to_windows(self, "max_positions", self.max_positions)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``(batch, time, vocab)`` for token ids ``(batch, time)``."""
        # Gradient checkpointing recomputes each layer in the backward pass, outside this context: there torch would
        # pick another attention kernel than the forward's, whose saved tensors differ (torch's CheckpointError).
        recomputes = bool(
            getattr(self.model, "is_activation_checkpointing", None)  # transformers >= 5.x
            if hasattr(type(self.model), "is_activation_checkpointing")
            else getattr(self.model, "is_gradient_checkpointing", False)
        )
        with contextlib.nullcontext() if recomputes else attention_kernels(input_ids.device):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _losses(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence mean next-token cross-entropy (fp32) and the number of tokens each averages over."""
        batch = self._batch(batch)
        input_ids = batch["input_ids"]
        labels = batch.get("labels")
        if labels is None:
            labels = input_ids
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
        losses = sequence_losses(self(input_ids, mask), labels, ignore_index=IGNORE_INDEX)
        return losses, (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)

    def _batch(self, batch: Any) -> Mapping[str, torch.Tensor]:
        """The batch as a Hugging Face dict, its token ids checked; refused in one line when it is none."""
        batch = to_causal_lm_batch(batch)
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise InvalidArgumentError(
                f"{type(self).__name__}: a batch must be a dict with `input_ids` (and optionally `attention_mask`, "
                f"`labels`) or an (x, y) pair of token tensors; got {type(batch).__name__}."
            )
        self._check_ids(batch["input_ids"])
        return batch

    def _check_ids(self, input_ids: Any) -> None:
        """Refuse token ids the embedding cannot look up, in words (torch's is "index out of range in self")."""
        name, cfg = type(self).__name__, self.model.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
            kind = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise InvalidArgumentError(
                f"{name}: a batch's `input_ids` must be token ids of dtype torch.int64 or torch.int32, not {kind}."
            )
        positions = getattr(cfg, "n_positions", None)  # learned positions (GPT-2): no longer context than that
        if isinstance(positions, int) and input_ids.shape[-1] > positions:
            raise InvalidArgumentError(
                f"{name}: sequences of {input_ids.shape[-1]} tokens are longer than the model's n_positions="
                f"{positions}; cut the sequences to at most {positions} tokens."
            )
        accelerator = input_ids.device.type != "cpu"
        if accelerator and getattr(self, "_ids_checked", False):
            return  # on an accelerator the range check syncs: the first batch of each stage is checked
        lo, hi = torch.aminmax(input_ids) if input_ids.numel() else (torch.tensor(0), torch.tensor(0))
        if int(lo) < 0 or int(hi) >= cfg.vocab_size:
            raise InvalidArgumentError(
                f"{name}: a batch has token id {int(hi) if int(hi) >= cfg.vocab_size else int(lo)}, outside the "
                f"model's vocabulary of {cfg.vocab_size} (ids 0-{cfg.vocab_size - 1}); tokenize for this model or "
                "build it with a larger vocabulary."
            )
        self._ids_checked = accelerator

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy over the batch's tokens (fp32) and the number of tokens it averages over."""
        losses, counts = self._losses(batch)
        n = int(counts.sum())
        return (losses * counts).sum() / max(n, 1), n

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the next token: the mean over the batch's tokens (the HF ``loss``).

        Under :class:`~lightning_green.DataPruning` one loss per sequence (the mean over its tokens) is reduced by it
        instead (what ``reduce_sample_losses`` does): those are the scores, and each kept sequence counts once.
        """
        losses, counts = self._losses(batch)
        token_mean = (losses * counts).sum() / counts.sum().clamp(min=1)
        self.log("train_loss", token_mean.detach(), on_step=True, on_epoch=True, prog_bar=True)
        pruning = active_data_pruning(self)  # looked up once: reduce_sample_losses would look it up again
        return token_mean if pruning is None else pruning.reduce(losses)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the validation loss, weighted by predicted tokens."""
        loss, n = self._loss(batch)
        self.val_nll.update(loss, weight=n)

    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss`` and ``val_ppl``."""
        log_nll(self, self.val_nll, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the test loss, weighted by predicted tokens."""
        loss, n = self._loss(batch)
        self.test_nll.update(loss, weight=n)

    def on_test_epoch_end(self) -> None:
        """Log ``test_loss`` and ``test_ppl``."""
        log_nll(self, self.test_nll, "test")

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The most likely next token at every position."""
        batch = self._batch(batch)
        return self(batch["input_ids"], batch.get("attention_mask")).argmax(dim=-1)

    @torch.no_grad()
    def generate(self, prompt: bytes, max_new_bytes: int = 64, use_cache: bool = True) -> bytes:
        """Greedy continuation of ``prompt`` by the Hugging Face ``generate`` (byte vocabulary)."""
        was_training = self.training
        self.eval()
        idx = torch.tensor([list(prompt) or [0]], dtype=torch.long, device=self.device)
        out = self.model.generate(
            input_ids=idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=max_new_bytes,
            min_new_tokens=max_new_bytes,
            do_sample=False,
            use_cache=use_cache,
        )
        self.train(was_training)
        data = bytes(int(t) % 256 for t in out[0].tolist())
        return data if prompt else data[1:]

    def configure_optimizers(self):  # noqa: D102 - Lightning hook
        return adamw_cosine(self, {id(m.weight) for m in self.model.modules() if isinstance(m, torch.nn.Embedding)})


def _check_causal(owner: str, path: str, model: Any) -> None:
    """Refuse a loaded model whose logits at a position read later tokens.

    An encoder such as BERT, which ``AutoModelForCausalLM`` loads with a mere warning unless its config says
    ``is_decoder``.
    """
    n = min(4, _max_positions(model.config))  # GPT-2's learned positions may be fewer than 4
    if n < 2:
        return
    ids = torch.arange(1, n + 1).repeat(2, 1)
    ids[1, -1] += 1  # the second sequence differs in its last token only
    ids %= max(2, int(model.config.vocab_size))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
    finally:
        model.train(was)
    if not torch.allclose(logits[0, :-1], logits[1, :-1], rtol=1e-4, atol=1e-5):
        mtype = getattr(model.config, "model_type", "?")
        raise InvalidArgumentError(
            f"{owner}(pretrained_path={path!r}): {type(model).__name__} ({mtype!r}) is not causal: its logits read "
            "later tokens, so its next-token loss would not be a language model's; give a decoder-only causal LM "
            "(for an encoder's LM head, save its config with is_decoder=True)."
        )


def _max_positions(config: Any) -> int:
    """The longest context a config allows (GPT-2 calls it ``n_positions``)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
