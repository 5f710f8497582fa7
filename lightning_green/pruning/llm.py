"""Structured pruning of Hugging Face decoder-only causal LMs on a structure known per family.

Torch-Pruning's dependency-graph search does not return on these models (upstream VainF/Torch-Pruning#527, #519;
see the project notes), and there is no need to search: every decoder block of a family is built the same way, so
which weights share a channel is known from the family and the config. :class:`LLMPruner` recognises Llama,
Mistral, Qwen2, Qwen3, Phi-3 and GPT-2 and cuts, in every decoder layer alike (one config still describes the
model):

- MLP hidden units (gate, up and down projections together; Phi-3's fused ``gate_up_proj``; GPT-2's ``c_fc`` and
  ``c_proj`` Conv1D),
- attention heads, by whole key/value groups under grouped-query attention (a KV head with the query heads that
  read it; Phi-3's fused ``qkv_proj``); GPT-2 keeps its heads (its config ties the attention width to the
  residual width),
- optionally the residual width (embeddings, every norm, every projection's residual side, ``lm_head``; tied
  embeddings stay one tensor),
- optionally whole decoder layers (``prune_layers``): those that change the residual stream least, by Block
  Influence (one minus the cosine similarity of a layer's input and output hidden states over training tokens, as
  in ShortGPT, Men et al. 2024; Minitron's depth pruning). A layer's every op goes, not only its matrix products, so
  on small models and CPUs the time saved is closer to the MACs saved than with width cuts alone.

The model's ``config`` (``intermediate_size``/``n_inner``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``hidden_size``, ``num_hidden_layers``/``layer_types``) and the attention modules' run-time attributes
(``layer_idx`` after a layer goes) follow each cut, and each cut keeps to the head counts and widths the family's
config accepts (transformers' own ``config.validate()`` passes), so ``generate()``,
``save_pretrained()``/``from_pretrained()`` work on the pruned model. Frozen parameters and the modules
``ignored_layers`` names keep their widths. A cut is recorded as plain history entries
``["<model path>::<kind>::<layer>", True, [removed unit indices]]`` (``<kind>`` ``layers`` with no layer: the removed
decoder layers) that :func:`replay_llm` applies to a fresh model.
No Lightning import here.
"""

from __future__ import annotations

import bisect
import copy
import gc
import logging
import math
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from lightning_green._internal.validation import InvalidArgumentError, fail
from lightning_green.pruning.engine import ChannelPruner, PruneResult
from lightning_green.pruning.graph import Lineage, _meta_copy, count_macs_params, eager
from lightning_green.pruning.op_count import linear_like_counted
from lightning_green.pruning.verify import first_line

__all__ = [
    "LLM_IMPORTANCES",
    "SUPPORTED_FAMILIES",
    "LLMPruner",
    "LLMStructure",
    "analyse",
    "count_llm_macs",
    "find_hf_model",
    "is_layer_drop",
    "is_llm_entry",
    "renumber_after_layer_drops",
    "replay_llm",
]

log = logging.getLogger(__name__)

#: ``model_type`` → family whose block layout it shares.
SUPPORTED_FAMILIES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "phi3": "phi3",
    "gpt2": "gpt2",
}
#: Importance criteria the LLM pruner understands (``"lamp"`` ranks like ``"magnitude-l2"`` within a layer, which
#: is all that uniform widths need).
LLM_IMPORTANCES = ("magnitude-l1", "magnitude-l2", "taylor", "lamp", "random", "activation")
_SSM_TYPES = ("mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba", "falcon_h1", "xlstm")
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")
_SEP = "::"


# --------------------------------------------------------------------------------------------------- structure
def _holders(obj: Any, known: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """Every module that holds ``obj`` as an attribute, found through the garbage collector's referrers.

    Two scans of the heap at most: the referrers of ``obj``, then, for instance dicts that are not those of ``known``
    modules, the referrers of all of them at once.
    """
    by_dict = {id(vars(m)): m for m in known}
    out: list[nn.Module] = []
    unknown: list[dict[str, Any]] = []
    for ref in gc.get_referrers(obj):
        if isinstance(ref, nn.Module):  # attributes stored inline (CPython >= 3.11)
            out.append(ref)
        elif isinstance(ref, dict):  # or in an instance __dict__
            if id(ref) in by_dict and by_dict[id(ref)].__dict__ is ref:
                out.append(by_dict[id(ref)])
            else:
                unknown.append(ref)
    if unknown:
        ids = {id(d) for d in unknown}
        owners = gc.get_referrers(*unknown)
        out += [o for o in owners if isinstance(o, nn.Module) and id(getattr(o, "__dict__", None)) in ids]
    return out


@dataclass(frozen=True)
class Part:
    """One tensor that follows a group of units.

    ``path`` is relative to the HF model, ``dim`` the dimension cut, ``segments`` the ``(offset, rows per unit)`` runs
    of that dimension that belong to the units (several for fused layers: Phi-3's ``qkv_proj``, ``gate_up_proj``).
    """

    path: str
    dim: int
    segments: tuple[tuple[int, int], ...]


@dataclass
class Group:
    """A set of coupled units (MLP hidden units, KV groups, residual channels) and the tensors they span."""

    kind: str  # "mlp" | "heads" | "hidden"
    layer: int | None  # decoder layer, None for the model-wide residual width
    units: int
    parts: list[Part] = field(default_factory=list)
    #: Modules whose input holds one row per unit (activation importance reads |input| there).
    probe: str = ""
    probe_rows: int = 1


@dataclass
class LLMStructure:
    """What :func:`analyse` found: the HF model, where it sits, its family and the coupled groups."""

    path: str
    model: nn.Module
    family: str
    layers: str  # path of the decoder-layer ModuleList inside the HF model
    #: The module the HF model was found in (a LightningModule), where another model may share its config object.
    root: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> Any:
        """The HF model's config."""
        return self.model.config

    def own_config(self) -> Any:
        """The model's config, first made the model's own when a module beside it holds the same object.

        transformers keeps the config object a model is built from, so ``Cls(cfg)`` twice (a student and its frozen
        teacher) gives both one config. Writing the student's new widths or depth into it would change the teacher
        too (a Phi-3 teacher then fails, a Llama teacher runs fewer layers). Then the model gets a deep copy, and
        every module of it that held the shared object (the model, its base model, attention, MLP, decoder layer,
        rotary embedding: each keeps ``self.config``) holds the copy. Modules around the model (a LightningModule's
        own ``self.config``) do not count; a config held by nothing else is written in place.
        """
        cfg = self.config
        inside = {id(m) for m in self.model.modules()}
        # Every module that holds the object, wherever it is (a teacher kept out of the module tree, e.g. in a tuple,
        # or a run rebuilt from a checkpoint, which sees only the student): the garbage collector's referrers.
        sharers = [
            type(m).__name__
            for m in _holders(cfg, known=self.model.modules())
            if id(m) not in inside and not any(sub is self.model for sub in m.modules())  # not one around the model
        ]
        if not sharers:
            return cfg
        own = copy.deepcopy(cfg)
        for m in self.model.modules():
            for k, v in list(vars(m).items()):
                if v is cfg:
                    m.__dict__[k] = own
        log.info(
            "%s shares its config object with %s; it gets its own copy before its widths change",
            type(self.model).__name__,
            ", ".join(sorted(set(sharers))[:3]),
        )
        return own

    def blocks(self) -> nn.ModuleList:
        """The decoder layers."""
        return self.model.get_submodule(self.layers)

    def head_dim(self) -> int:
        """Width of one attention head."""
        cfg = self.config
        if self.family == "gpt2":
            return cfg.n_embd // cfg.n_head
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def mlp_width(self) -> int:
        """MLP hidden units per layer."""
        cfg = self.config
        if self.family == "gpt2":
            return cfg.n_inner if cfg.n_inner is not None else 4 * cfg.n_embd
        return cfg.intermediate_size

    def hidden(self) -> int:
        """Residual width."""
        return self.config.n_embd if self.family == "gpt2" else self.config.hidden_size

    def kv_heads(self) -> int:
        """Key/value heads per layer (the units of a head cut)."""
        cfg = self.config
        if self.family == "gpt2":
            return cfg.n_head
        return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads

    def q_per_kv(self) -> int:
        """Query heads that read one key/value head."""
        heads = self.config.n_head if self.family == "gpt2" else self.config.num_attention_heads
        return heads // self.kv_heads()

    def widths(self) -> dict[str, int]:
        """Current widths by group kind (what one config says about every layer)."""
        return {"mlp": self.mlp_width(), "heads": self.kv_heads(), "hidden": self.hidden()}

    # groups ------------------------------------------------------------------------------------------------
    def groups(self, kinds: Sequence[str]) -> list[Group]:
        """The coupled groups of ``kinds``, layer by layer (one block's layout serves all)."""
        out = []
        n = len(self.blocks())
        prefix = self.layers
        for kind in kinds:
            if kind == "hidden":
                out.append(self._hidden_group(n))
                continue
            for i in range(n):
                g = self._mlp_group(i) if kind == "mlp" else self._heads_group(i)
                g.parts = [Part(f"{prefix}.{i}.{p.path}", p.dim, p.segments) for p in g.parts]
                g.probe = f"{prefix}.{i}.{g.probe}"
                out.append(g)
        return [g for g in out if self._exists(g)]

    def _exists(self, group: Group) -> bool:
        group.parts = [p for p in group.parts if _get_param(self.model, p.path) is not None]
        return bool(group.parts)

    def _mlp_group(self, i: int) -> Group:
        w = self.mlp_width()
        one = ((0, 1),)
        if self.family == "gpt2":
            parts = [Part("mlp.c_fc.weight", 1, one), Part("mlp.c_fc.bias", 0, one), Part("mlp.c_proj.weight", 0, one)]
            return Group("mlp", i, w, parts, probe="mlp.c_proj")
        if self.family == "phi3":
            two = ((0, 1), (w, 1))
            parts = [Part("mlp.gate_up_proj.weight", 0, two), Part("mlp.gate_up_proj.bias", 0, two)]
        else:
            parts = [Part(f"mlp.{n}.{t}", 0, one) for n in ("gate_proj", "up_proj") for t in ("weight", "bias")]
        return Group("mlp", i, w, [*parts, Part("mlp.down_proj.weight", 1, one)], probe="mlp.down_proj")

    def _heads_group(self, i: int) -> Group:
        hd, kv, g = self.head_dim(), self.kv_heads(), self.q_per_kv()
        q = ((0, g * hd),)
        if self.family == "phi3":
            nq = kv * g * hd
            qkv = ((0, g * hd), (nq, hd), (nq + kv * hd, hd))
            parts = [Part(f"self_attn.qkv_proj.{t}", 0, qkv) for t in ("weight", "bias")]
        else:
            parts = [Part(f"self_attn.q_proj.{t}", 0, q) for t in ("weight", "bias")]
            parts += [
                Part(f"self_attn.{n}.{t}", 0, ((0, hd),)) for n in ("k_proj", "v_proj") for t in ("weight", "bias")
            ]
        parts.append(Part("self_attn.o_proj.weight", 1, q))
        return Group("heads", i, kv, parts, probe="self_attn.o_proj", probe_rows=g * hd)

    def _hidden_group(self, n: int) -> Group:
        one = ((0, 1),)
        base = self.layers.rpartition(".")[0]  # "model"
        pre = f"{base}." if base else ""
        parts = [Part(f"{pre}embed_tokens.weight", 1, one)]
        for i in range(n):
            b = f"{self.layers}.{i}."
            parts += [Part(f"{b}{nm}.weight", 0, one) for nm in ("input_layernorm", "post_attention_layernorm")]
            if self.family == "phi3":
                ins = ("self_attn.qkv_proj", "mlp.gate_up_proj")
            else:
                ins = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
            parts += [Part(f"{b}{nm}.weight", 1, one) for nm in ins]
            for nm in ("self_attn.o_proj", "mlp.down_proj"):
                parts += [Part(f"{b}{nm}.weight", 0, one), Part(f"{b}{nm}.bias", 0, one)]
        parts.append(Part(f"{pre}norm.weight", 0, one))
        out_name = _module_name(self.model, self.model.get_output_embeddings())
        parts.append(Part(f"{out_name}.weight", 1, one))
        return Group("hidden", None, self.hidden(), parts, probe=f"{pre}norm")

    # config -------------------------------------------------------------------------------------------------
    def sync_config(self) -> None:
        """Write the weights' widths into ``config`` and the attention modules' run-time attributes.

        A config object that a module beside the model shares (a frozen teacher built from it) is copied first
        (:meth:`own_config`).
        """
        cfg, blocks = self.own_config(), self.blocks()
        b0 = blocks[0]
        _sync_layer_count(cfg, blocks)
        if self.family == "gpt2":
            cfg.n_inner = b0.mlp.c_fc.weight.shape[1]
            for b in blocks:
                _sync_module_shapes(b)
            return
        hd = self.head_dim()
        cfg.head_dim = hd  # explicit from now on: hidden_size / num_heads no longer gives it
        cfg.intermediate_size = b0.mlp.down_proj.weight.shape[1]
        heads = b0.self_attn.o_proj.weight.shape[1] // hd
        g = self.q_per_kv()
        cfg.num_attention_heads = heads
        cfg.num_key_value_heads = heads // g
        cfg.hidden_size = self.model.get_input_embeddings().weight.shape[1]
        for b in blocks:
            attn = b.self_attn
            for attr, value in (
                ("num_heads", heads),
                ("num_attention_heads", heads),
                ("num_key_value_heads", heads // g),
                ("num_key_value_groups", g),
                ("head_dim", hd),
                ("hidden_size", cfg.hidden_size),
            ):
                if isinstance(getattr(attn, attr, None), int):
                    setattr(attn, attr, value)
            for attr, value in (("intermediate_size", cfg.intermediate_size), ("hidden_size", cfg.hidden_size)):
                if isinstance(getattr(b.mlp, attr, None), int):
                    setattr(b.mlp, attr, value)
            _sync_module_shapes(b)
        _sync_module_shapes(self.model, recurse=False)


def _sync_layer_count(cfg: Any, blocks: nn.ModuleList) -> None:
    """``num_hidden_layers`` (GPT-2: ``n_layer``), ``layer_types`` and each layer's ``layer_idx`` follow the blocks."""
    n = len(blocks)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and len(types) != n:
        own = [getattr(getattr(b, "self_attn", None), "layer_type", None) for b in blocks]
        if all(isinstance(t, str) for t in own):  # Qwen2/Qwen3: each attention knows its type
            cfg.layer_types = own
        elif len(set(types)) <= 1:
            cfg.layer_types = types[:1] * n
    cfg.num_hidden_layers = n
    for i, b in enumerate(blocks):
        for m in b.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


def _sync_module_shapes(root: nn.Module, recurse: bool = True) -> None:
    """Keep ``in_features``/``out_features`` & co. in step with the weights (for repr and for code that reads them)."""
    mods = root.modules() if recurse else [root.get_input_embeddings(), root.get_output_embeddings()]
    for m in mods:
        if m is None:
            continue
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            continue
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = w.shape
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(w.shape)
        elif type(m).__name__ == "Conv1D":
            m.nx, m.nf = w.shape


def _get_param(model: nn.Module, path: str) -> torch.Tensor | None:
    owner, _, attr = path.rpartition(".")
    try:
        holder = model.get_submodule(owner) if owner else model
    except AttributeError:
        return None
    value = getattr(holder, attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _module_name(root: nn.Module, target: nn.Module | None) -> str:
    for name, m in root.named_modules():
        if m is target:
            return name
    raise InvalidArgumentError(f"module {target!r} is not inside the model")


def _rows(part: Part, units: torch.Tensor) -> torch.Tensor:
    """Indices along ``part.dim`` that belong to ``units`` (in segment order, units ascending)."""
    idx = []
    for offset, size in part.segments:
        base = offset + units[:, None] * size
        idx.append((base + torch.arange(size)).reshape(-1))
    return torch.cat(idx)


# ---------------------------------------------------------------------------------------------------- finding
def find_hf_model(module: nn.Module, owner: str = "StructuredPruning") -> tuple[str, nn.Module] | None:
    """The Hugging Face ``PreTrainedModel`` to prune inside ``module`` (or ``module`` itself), with its path.

    Among the outermost HF models inside ``module``, the one with trainable parameters: a frozen teacher beside the
    student is not the model being trained. When several are trainable (or none is and there are several), which
    one to prune is ambiguous and ``module=`` must name it.

    Nothing of ``transformers`` is imported here: a module can only hold an HF model once
    ``transformers.modeling_utils`` (where ``PreTrainedModel`` lives) is imported. Only ``import transformers`` (as
    torchmetrics does) leaves that lazy, and reading ``transformers.PreTrainedModel`` would load it (~0.6 s).

    Raises:
        ValueError: Several HF models inside ``module`` could be the one to prune.
    """
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None:
        return None
    base = getattr(modeling, "PreTrainedModel", None)
    if base is None:
        return None
    if isinstance(module, base):
        return "", module
    found: list[tuple[str, nn.Module]] = []
    for name, m in module.named_modules():
        if isinstance(m, base) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, m))
    if len(found) <= 1:
        return found[0] if found else None
    trainable = [(name, m) for name, m in found if any(p.requires_grad for p in m.parameters())]
    if len(trainable) == 1:
        return trainable[0]
    paths = [name for name, _ in trainable or found]
    which = "trainable " if trainable else ""
    fail(
        owner,
        "module",
        None,
        f"the name of the Hugging Face model to prune: {type(module).__name__} holds {len(paths)} {which}ones "
        f"({', '.join(map(repr, paths))}), e.g. {owner}(module={paths[-1]!r})",
    )
    return None  # unreachable: fail() raises


def analyse(module: nn.Module, owner: str = "StructuredPruning") -> LLMStructure | None:
    """Recognise a supported HF causal LM inside ``module``; ``None`` when there is no HF model at all.

    Raises:
        ValueError: An HF model this pruner cannot cut (encoder-decoder, mixture-of-experts, state-space, an
            unknown family or attention module, no language-model head), in one line that says what to do.
    """
    found = find_hf_model(module, owner)
    if found is None:
        return None
    path, model = found
    cfg = getattr(model, "config", None)
    mtype = str(getattr(cfg, "model_type", "") or "")
    cls = type(model).__name__
    where = f"{cls} at {path!r}" if path else cls
    families = ", ".join(sorted(SUPPORTED_FAMILIES))
    remedy = f"supported model_types: {families}; remove StructuredPruning to train this model unpruned"
    if getattr(cfg, "is_encoder_decoder", False):
        _refuse(
            owner,
            f"{where}: it is an encoder-decoder model ({mtype!r}); only decoder-only causal LMs are pruned ({remedy}).",
        )
    if any(getattr(cfg, k, None) for k in _MOE_KEYS) or "moe" in mtype:
        _refuse(
            owner,
            f"{where}: it is a mixture-of-experts model ({mtype!r}): expert MLPs are not prunable here ({remedy}).",
        )
    if mtype in _SSM_TYPES or "mamba" in mtype or hasattr(cfg, "state_size") or hasattr(cfg, "ssm_cfg"):
        _refuse(owner, f"{where}: it is a state-space model ({mtype!r}), which has no heads or MLP to cut ({remedy}).")
    family = SUPPORTED_FAMILIES.get(mtype)
    if family is None:
        _refuse(owner, f"{where}: its model_type {mtype!r} is not a family it knows ({remedy}).")
    if getattr(cfg, "is_heterogeneous", False) is True:  # transformers >= 5: `per_layer_config` overrides
        _refuse(
            owner,
            f"{where}: its config is heterogeneous (`per_layer_config` gives layers their own settings); every layer "
            f"must share one shape to be cut alike ({remedy}).",
        )
    if model.get_output_embeddings() is None:
        _refuse(
            owner,
            f"{where}: it has no language-model head, so its forward returns no logits; wrap an AutoModelForCausalLM "
            f"(e.g. {_causal_lm_name(cls)}) instead.",
        )
    layers = "transformer.h" if family == "gpt2" else "model.layers"
    try:
        blocks = model.get_submodule(layers)
    except AttributeError:
        _refuse(
            owner, f"{where}: it has no decoder layers at {layers!r}; it is not laid out like {mtype!r} ({remedy})."
        )
    structure = LLMStructure(path=path, model=model, family=family, layers=layers, root=module)
    expected = _EXPECTED[family]
    for i, block in enumerate(blocks):
        for sub, kinds in expected.items():
            try:
                m = block.get_submodule(sub)
            except AttributeError:
                m = None
            if m is None or not any(type(m).__name__ == k or isinstance(m, _TYPES.get(k, ())) for k in kinds):
                if m is None:
                    parent = sub.rpartition(".")[0]
                    try:
                        got = f"{type(block.get_submodule(parent)).__name__} at {parent!r} without {sub!r}"
                    except AttributeError:
                        got = f"nothing at {sub!r}"
                else:
                    got = f"{type(m).__name__} at {sub!r}"
                _refuse(
                    owner,
                    f"{where}: layer {i} has {got}, where a {mtype} block has {' or '.join(kinds)} (a custom "
                    f"attention/MLP it does not recognise); restore the stock module, or {remedy}.",
                )
    return structure


def _causal_lm_name(cls: str) -> str:
    """The causal-LM class of the family of ``cls`` (``LlamaForSequenceClassification`` → ``LlamaForCausalLM``).

    Example:
        >>> _causal_lm_name("LlamaForTokenClassification"), _causal_lm_name("Qwen2Model"), _causal_lm_name("GPT2Model")
        ('LlamaForCausalLM', 'Qwen2ForCausalLM', 'GPT2LMHeadModel')
    """
    prefix = cls.partition("For")[0] if "For" in cls else cls.removesuffix("Model")
    if prefix == "GPT2":
        return "GPT2LMHeadModel"
    return f"{prefix or cls}ForCausalLM"


_TYPES: dict[str, tuple[type, ...]] = {"Linear": (nn.Linear,)}
_EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {
        "self_attn.q_proj": ("Linear",),
        "self_attn.k_proj": ("Linear",),
        "self_attn.v_proj": ("Linear",),
        "self_attn.o_proj": ("Linear",),
        "mlp.gate_proj": ("Linear",),
        "mlp.up_proj": ("Linear",),
        "mlp.down_proj": ("Linear",),
    },
    "phi3": {
        "self_attn.qkv_proj": ("Linear",),
        "self_attn.o_proj": ("Linear",),
        "mlp.gate_up_proj": ("Linear",),
        "mlp.down_proj": ("Linear",),
    },
    "gpt2": {
        "attn.c_attn": ("Conv1D",),
        "attn.c_proj": ("Conv1D",),
        "mlp.c_fc": ("Conv1D",),
        "mlp.c_proj": ("Conv1D",),
    },
}


def _refuse(owner: str, message: str) -> None:
    raise InvalidArgumentError(f"{owner}: cannot prune {message}")


def is_llm_entry(entry: Sequence[Any]) -> bool:
    """Whether a history entry was written by :class:`LLMPruner` (not by torch-pruning)."""
    return _SEP in str(entry[0])


def is_layer_drop(entry: Sequence[Any]) -> bool:
    """Whether a history entry removed whole decoder layers (``prune_layers``)."""
    return str(entry[0]).endswith(f"{_SEP}layers{_SEP}")


# ---------------------------------------------------------------------------------------------------- MACs
def example_ids(structure: LLMStructure, length: int = 32) -> torch.Tensor:
    """A fixed ``input_ids`` batch of one sequence (for MAC counts and the logits check)."""
    cfg = structure.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or length
    n = min(length, int(limit))
    device = next(structure.model.parameters()).device
    return (torch.arange(n, device=device) * 7 % int(cfg.vocab_size)).unsqueeze(0)


def are_token_ids(x: Any) -> bool:
    """Whether ``x`` is a batch of token ids: an integer tensor ``(batch, sequence)``."""
    return (
        isinstance(x, torch.Tensor)
        and x.dim() == 2
        and not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    )


def _token_ids(s: LLMStructure, x: Any) -> torch.Tensor:
    """``x`` when it is a batch of token ids, else :func:`example_ids`."""
    return x if are_token_ids(x) else example_ids(s)


def count_llm_macs(structure: LLMStructure, input_ids: torch.Tensor | None = None) -> tuple[float, int]:
    """MACs of one forward over ``input_ids`` (per sequence) and the parameter count, by torch-pruning's counter.

    Through :func:`~lightning_green.pruning.graph.count_macs_params`: the counter runs a copy on the ``meta`` device
    (its own deep copy of a billion-parameter model would need that much accelerator memory again), and HF's
    ``Conv1D`` (GPT-2) is counted like ``nn.Linear``.
    """
    ids = example_ids(structure) if input_ids is None else input_ids
    return count_macs_params(structure.model, ids)


def _layer_macs(model: nn.Module, ids: torch.Tensor) -> dict[nn.Module, Any]:
    """MACs of each module of ``model`` over ``ids`` (torch-pruning's layer-wise count), keyed by its own modules.

    Counted on a ``meta``-device copy like :func:`~lightning_green.pruning.graph.count_macs_params` (the counter's
    own deep copy of the model would need its memory again); a model that cannot run on ``meta`` is counted as is.
    """
    with eager(), torch.no_grad(), linear_like_counted():
        try:
            shadow = _meta_copy(model)
            _, _, by_copy, _ = tp.utils.count_ops_and_params(shadow, ids.to("meta"), layer_wise=True)
            return {m: by_copy.get(c) for m, c in zip(model.modules(), shadow.modules(), strict=True)}
        except Exception as err:  # not runnable on meta (GPT-2's attention calls .item())
            log.debug("layer-wise MAC count on the meta device failed (%s); counting the model itself", err)
            _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, ids, layer_wise=True)
            return layer_macs


# ------------------------------------------------------------------------------------------------- cutting
def _cut(model: nn.Module, groups: Sequence[Group], removed: Mapping[int, list[int]], lineage: Lineage) -> None:
    """Remove units ``removed[i]`` of ``groups[i]`` from every tensor the group spans (tied tensors once)."""
    for gi, group in enumerate(groups):
        gone = sorted(set(removed.get(gi, [])))
        if not gone:
            continue
        keep_units = torch.tensor([u for u in range(group.units) if u not in set(gone)], dtype=torch.long)
        done: dict[int, nn.Parameter] = {}
        for part in group.parts:
            owner, _, attr = part.path.rpartition(".")
            holder = model.get_submodule(owner) if owner else model
            old = getattr(holder, attr)
            if id(old) in done:
                setattr(holder, attr, done[id(old)])
                continue
            keep = _rows(part, keep_units)
            total = old.shape[part.dim]
            # Rows outside every segment (none in these families) are kept as they are.
            covered = _rows(part, torch.arange(group.units))
            rest = torch.tensor(sorted(set(range(total)) - set(covered.tolist())), dtype=torch.long)
            if len(rest):
                keep = torch.sort(torch.cat([keep, rest])).values
            with torch.no_grad():
                data = torch.index_select(old.detach(), part.dim, keep.to(old.device)).clone()
            new = nn.Parameter(data, requires_grad=old.requires_grad)
            lineage.record(new, old, part.dim, keep.tolist())
            setattr(holder, attr, new)
            done[id(old)] = new
        # A tensor shared with a module outside this group (a tied embedding) follows too.
        _retie(model, done)


def _retie(model: nn.Module, replaced: Mapping[int, nn.Parameter]) -> None:
    if not replaced:
        return
    for m in model.modules():
        for attr, p in list(m._parameters.items()):
            if p is not None and id(p) in replaced:
                setattr(m, attr, replaced[id(p)])


def _drop_layers(s: LLMStructure, removed: Sequence[int]) -> dict[int, int]:
    """Remove decoder layers ``removed`` from ``s``'s model; returns old index → new index of the kept layers.

    The layer list becomes a new ``ModuleList`` of the same layer objects (their parameters and optimizer state are
    untouched); ``layer_types`` drops the removed layers' entries and the config follows.
    """
    blocks = s.blocks()
    gone = set(int(i) for i in removed)
    keep = [i for i in range(len(blocks)) if i not in gone]
    parent_path, _, attr = s.layers.rpartition(".")
    parent = s.model.get_submodule(parent_path) if parent_path else s.model
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
    cfg = s.own_config()
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and len(types) == len(blocks):
        cfg.layer_types = [types[i] for i in keep]
    _sync_layer_count(cfg, s.blocks())
    return {old: new for new, old in enumerate(keep)}


def _layer_io(args: tuple, kwargs: Mapping[str, Any], output: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A decoder layer's input and output hidden states from a forward hook (``None`` if it does not show them)."""
    x = args[0] if args else kwargs.get("hidden_states")
    y = output[0] if isinstance(output, (tuple, list)) and output else output
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
        return x, y
    return None


def _kept_after(units: int, ratio: float) -> int:
    """Units left after removing ``ratio`` of ``units``, to the nearest unit.

    Coarse groups (two KV heads) then follow an iterative schedule: 2 -> 2 -> 1 for step ratios 0.25, 0.33.
    """
    return int(math.floor(units * (1.0 - ratio) + 0.5))


def _removed_count(
    units: int,
    dense: int,
    ratio: float,
    max_ratio: float,
    round_to: int | None,
    goal: float | None = None,
    final: bool = True,
) -> int:
    """Units to remove now: ``ratio`` of the current ones, capped so at most ``max_ratio`` of ``dense`` go in all.

    With ``goal`` (the share of ``dense`` to be gone after this cut), down to ``goal`` of ``dense`` instead: the
    prunes of a schedule then do not add up their roundings (10 units cut 8 times towards 0.5 ended with 4).
    ``round_to``: the ``final`` cut keeps a multiple of it (rounded down), and no cut keeps fewer than the fewest
    multiple ``max_layer_ratio`` allows, so that the final one can round to it whatever the schedule (an earlier prune
    below it left the final one nothing to round to: 64 units towards 0.9 with ``round_to=8`` ended with 7).

    Example:
        >>> _removed_count(64, 64, 0.5, 1.0, 8, goal=0.95, final=False), _removed_count(8, 64, 0.5, 1.0, 8, goal=0.9)
        (56, 0)
        >>> _removed_count(100, 172, 0.5, 1.0, 64, goal=0.7)  # keeps 64 (52 rounded down is no multiple >= 64)
        36
        >>> _removed_count(128, 128, 0.3, 0.3, 64), _removed_count(128, 128, 0.1, 0.3, 64, goal=0.1, final=False)
        (0, 0)
    """
    kept = _kept_after(dense, goal) if goal is not None else _kept_after(units, ratio)
    n = max(0, units - max(1, kept))
    floor_keep = _least_kept(dense, dense, max_ratio)
    n = min(n, max(0, units - floor_keep))
    if round_to:
        lowest = _least_multiple(floor_keep, round_to)  # the fewest a final cut may keep
        keep = units - n
        if final:
            keep = (keep // round_to) * round_to
        n = max(0, units - min(units, max(keep, lowest)))
    return n


def _mean_influence(recorded: torch.Tensor) -> float:
    """A layer's Block Influence per batch from its ``[sum, batches]`` (a bare sum from earlier checkpoints)."""
    return float(recorded[0] / recorded[1]) if recorded.numel() == 2 else float(recorded.sum())


def _least_multiple(least: int, round_to: int) -> int:
    """The fewest units a cut may keep under ``round_to`` when at least ``least`` must stay (one multiple at least)."""
    return max(round_to, math.ceil(least / round_to) * round_to)


def _least_kept(units: int, dense: int, max_ratio: float) -> int:
    """The fewest units a group of ``units`` (``dense`` before any prune) may keep under ``max_ratio``."""
    return min(units, max(1, dense - int(math.floor(dense * max_ratio + 1e-9))))


#: Module names whose mention in ``ignored_layers`` keeps a kind whole (also modules without weights of their own).
_KIND_MODULES: dict[str, set[str]] = {
    "mlp": {"mlp"},
    "heads": {"self_attn"},
    "hidden": {"embed_tokens", "norm", "input_layernorm", "post_attention_layernorm", "lm_head"},
}
_KIND_WORDS = {"mlp": "MLP units", "heads": "attention heads", "hidden": "the residual width"}


#: Ends the reason a module beside the HF model gives for keeping the residual width (so the fix can be told).
_OUTSIDE = " (so it is kept whole)"


def _outside_modules(s: LLMStructure) -> list[str]:
    """Modules of ``s.root`` (the LightningModule) with parameters outside every Hugging Face model in it.

    Such a module (``nn.Linear(hidden_size, 1)`` on ``hidden_states[-1]``) may read the residual stream, whose width
    a residual cut changes while the module keeps its own: the next training step would fail, and the check of a
    prune runs the HF model alone. Parameters of another ``PreTrainedModel`` (a frozen teacher) and parameters tied
    to the model's own do not count.
    """
    root = s.root
    if root is None or root is s.model:
        return []
    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None) if modeling is not None else None
    models = [m for m in root.modules() if base is not None and isinstance(m, base)] or [s.model]
    covered = {id(p) for m in models for p in m.parameters()}
    return [
        name or type(root).__name__
        for name, m in root.named_modules()
        if any(id(p) not in covered for p in m.parameters(recurse=False))
    ]


def _full_name(s: LLMStructure, rel: str) -> str:
    """``rel`` (relative to the HF model) as named from the pruned module."""
    return f"{s.path}.{rel}" if s.path and rel else (rel or s.path)


def _config_rule(s: LLMStructure) -> tuple[str, Callable[[int, int, int], list[int]]] | None:
    """What the family's config requires of the residual width for a number of query heads, where it ties them.

    ``(rule, widths)``: ``widths(query heads, lo, hi)`` lists the residual widths in ``[lo, hi]`` that the config
    accepts with that many query heads; ``None`` when it accepts any pair. transformers' own check
    (``config.validate()``) still runs on every cut (:meth:`LLMPruner._valid_plan`): this only steers the plan to
    widths it will pass.
    """
    cfg = s.config
    if getattr(cfg, "model_type", "") == "llama":  # LlamaConfig.validate_architecture
        return "hidden_size to be a multiple of num_attention_heads", lambda q, lo, hi: list(
            range(-(-lo // q) * q, hi + 1, q)
        )
    rope = getattr(cfg, "rope_parameters", None)
    if s.family != "phi3" or not isinstance(rope, dict):
        return None
    # Phi3Config.validate_rope (longrope): len(short_factor) == int(hidden_size // num_attention_heads * prf) // 2,
    # though the model itself rotates `head_dim` dimensions.
    lengths = {len(f) for f in (rope.get("short_factor"), rope.get("long_factor")) if isinstance(f, list)}
    if len(lengths) != 1:
        return None
    (half,) = lengths
    prf = float(rope.get("partial_rotary_factor") or 1.0)
    quotients = [a for a in range(1, s.hidden() + 1) if int(a * prf) // 2 == half]
    if not quotients:
        return None
    what = f"hidden_size // num_attention_heads to stay {quotients[0]}" + (
        f" or {quotients[-1]}" if len(quotients) > 1 else ""
    )

    def widths(q: int, lo: int, hi: int) -> list[int]:
        return [w for a in quotients for w in range(max(lo, q * a), min(hi, q * a + q - 1) + 1)]

    return f"{what} (its longrope factors are for that many rotary dimensions)", widths


def _config_after(s: LLMStructure, groups: Sequence[Group], plan: Mapping[int, list[int]]) -> Any:
    """A copy of the model's config with the widths ``plan`` would leave (as :meth:`LLMStructure.sync_config`)."""
    cfg = copy.deepcopy(s.config)
    left = {g.kind: g.units - len(plan.get(gi, [])) for gi, g in enumerate(groups)}  # alike in every layer
    if s.family == "gpt2":
        if "mlp" in left:
            cfg.n_inner = left["mlp"]
        return cfg
    cfg.head_dim = s.head_dim()
    if "mlp" in left:
        cfg.intermediate_size = left["mlp"]
    if "heads" in left:
        cfg.num_key_value_heads = left["heads"]
        cfg.num_attention_heads = left["heads"] * s.q_per_kv()
    if "hidden" in left:
        cfg.hidden_size = left["hidden"]
    return cfg


def _config_error(cfg: Any) -> str | None:
    """Why transformers refuses ``cfg`` (its ``validate()``, which ``save_pretrained`` runs), or ``None``."""
    validate = getattr(cfg, "validate", None)
    if not callable(validate):
        return None
    try:
        validate()
    except Exception as err:  # huggingface_hub's StrictDataclassClassValidationError wraps the ValueError
        return " ".join(str(err.__cause__ or err).split())
    return None


# -------------------------------------------------------------------------------------------------- pruner
class LLMPruner:
    """Prunes a Hugging Face causal LM inside a module in place, with the interface of ``ChannelPruner``.

    Args:
        owner: Class name used in error messages.
        importance: One of :data:`LLM_IMPORTANCES`. ``"activation"`` is mean |activation| of each unit (the input
            of ``down_proj``/``o_proj``, the residual stream at the final norm) over the batches observed with
            :meth:`observe` (Minitron's width criterion).
        round_to: The MLP width after the ``final`` prune and the residual width after every prune are multiples of
            this (warned once when ``max_layer_ratio`` allows no multiple below a dense width).
        ignored_layers: Names or glob patterns, as elsewhere in StructuredPruning. A module named that holds tensors
            of a kind (a decoder block, an attention or MLP or a part of one, a norm, the embeddings, ``lm_head``)
            stops all cuts of that kind, in every layer (every layer keeps the same widths); said once. A decoder
            block named is also kept by ``prune_layers``.
        max_layer_ratio: Largest share of a dense width that may be removed.
        num_heads: Optional check only: an attention projection name → its heads, which must match the config.
        prune_hidden: Also cut the residual width. Kept whole (said once) while the module pruned (or :attr:`scope`)
            holds parameters beside the HF models in it (a value or reward head on ``hidden_states``): their width
            would not follow.
        prune_layers: Decoder layers to remove in all, at the first prune (lowest Block Influence over the observed
            batches, else over the example input); width cuts then make up the rest of a MAC target. A layer whose
            block ``ignored_layers`` names is kept.

    Frozen parameters (``requires_grad=False``) keep whatever they span, as ``ignored_layers`` does: their kinds in
    every layer, their decoder layer from ``prune_layers``. Head counts and residual widths are only those the
    family's config accepts (Llama: ``hidden_size`` a multiple of ``num_attention_heads``; Phi-3 with longrope
    factors: ``hidden_size // num_attention_heads`` unchanged), rounded to the nearest, and transformers' own check
    of the config (``config.validate()``, which ``save_pretrained`` runs) passes before every cut: a cut it would
    refuse is left out, said once. The pruned model always saves and loads.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(cfg)
        >>> result = LLMPruner().prune(model, None, ratio=0.5)
        >>> cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        (32, 2, 1, 8)
    """

    def __init__(
        self,
        owner: str = "StructuredPruning",
        importance: str = "magnitude-l2",
        round_to: int | None = None,
        ignored_layers: Sequence[str] | None = None,
        max_layer_ratio: float = 0.9,
        num_heads: Mapping[str, int] | None = None,
        prune_hidden: bool = False,
        prune_layers: int = 0,
    ) -> None:
        self.owner = owner
        self.importance = importance
        self.round_to = round_to
        self.ignored_layers = list(ignored_layers or [])
        self.max_layer_ratio = max_layer_ratio
        self.num_heads = dict(num_heads or {})
        self.prune_hidden = prune_hidden
        self.prune_layers = prune_layers
        #: Layers this instance removed (the dense depth when no ``dense_channels`` record is given).
        self.layers_dropped = 0
        self.analysis_s = 0.0
        self.recording = False
        self._stats: dict[str, torch.Tensor] = {}
        #: The ``goal`` of the ratio prune being planned (see :meth:`prune`).
        self._goal: float | None = None
        self._hooks: list[Any] = []
        self._told: set[str] = set()
        #: Modules ``ignored_layers`` matched → the name (and pattern) it matched them by (decoder layers renumber).
        self._ignored_seen: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        #: The last plan's units to remove per kind: as the ratio asks, and as the config accepts.
        self._fitted: tuple[dict[str, int], dict[str, int]] = ({}, {})
        #: Kinds the config let the last target search cut but it left whole: how far past the goal (a share of the
        #: target MACs) the least such cut would have gone.
        self._could_cut: dict[str, float] = {}
        #: Per kind, the numbers of units the config accepted removing in the last target search.
        self._accepted_cuts: dict[str, set[int]] = {}
        self._scope: weakref.ref[nn.Module] | None = None

    # ------------------------------------------------------------------------------------------------ checks
    def structure(self, module: nn.Module) -> LLMStructure:
        """The HF causal LM inside ``module`` (refuses what it cannot prune)."""
        s = analyse(module, self.owner)
        if s is None:
            raise InvalidArgumentError(f"{self.owner}: no Hugging Face model inside {type(module).__name__}")
        scope = self.scope
        if scope is not None:
            s.root = scope
        return s

    @property
    def scope(self) -> nn.Module | None:
        """Where a module sharing the pruned model's config object may sit (the whole LightningModule), if set.

        Needed when the module given to :meth:`prune` is only the pruned model (``StructuredPruning(module=...)``)
        while a frozen teacher built from the same config sits beside it (:meth:`LLMStructure.own_config`).
        Held by a weak reference.
        """
        ref = self._scope
        return None if ref is None else ref()

    @scope.setter
    def scope(self, module: nn.Module | None) -> None:
        self._scope = None if module is None else weakref.ref(module)

    def _ignored(self, s: LLMStructure) -> dict[str, str]:
        """Names (relative to the HF model) of its modules that ``ignored_layers`` matches → how it matched them.

        ``""`` (the whole model) when a pattern names the HF model itself or a module around it. Names and glob
        patterns are matched as everywhere in StructuredPruning (:meth:`ChannelPruner._match`). A module matched
        once stays ignored under its new name when removed decoder layers renumber the ones after them.
        """
        modules = dict(s.model.named_modules())
        full = {rel: _full_name(s, rel) for rel in modules}
        steps = s.path.split(".") if s.path else []
        around = [".".join(steps[:i]) for i in range(1, len(steps))]
        names = [*full.values(), *around]
        for pattern in self.ignored_layers:
            hit = ChannelPruner._match(pattern, names)
            found = {rel: name for rel, name in full.items() if name in hit}
            for name in hit:
                if name in around:
                    found[""] = name
            for rel, name in found.items():
                label = repr(name) if name == pattern else f"{name!r} (by {pattern!r})"
                self._ignored_seen.setdefault(modules[rel], label)
        return {rel: self._ignored_seen[m] for rel, m in modules.items() if m in self._ignored_seen}

    def _candidate_kinds(self, s: LLMStructure) -> list[str]:
        """The group kinds the family and ``prune_hidden`` allow (GPT-2 keeps its heads)."""
        return ["mlp", *(["heads"] if s.family != "gpt2" else []), *(["hidden"] if self.prune_hidden else [])]

    def _excluded(self, s: LLMStructure, frozen: bool = True) -> dict[str, str]:
        """Kinds that are not cut on ``s`` → why: an ignored module, or (with ``frozen``) a frozen parameter.

        A kind is not cut when ``ignored_layers`` names a module that holds one of its tensors (a decoder block, an
        attention, an MLP, a norm, the embeddings, ``lm_head``) or a module inside its ``mlp``/``self_attn`` (an
        activation, say), or when one of its tensors has ``requires_grad=False``. Every decoder layer keeps the same
        widths (one config describes the model), so one layer's reason keeps the kind whole in every layer. With
        ``frozen``, a module with parameters beside the HF model (:func:`_outside_modules`) keeps the residual width.
        """
        matched = self._ignored(s)
        ignored = sorted(matched)
        why = {}
        for kind in self._candidate_kinds(s):
            named = next((n for n in ignored if set(n.split(".")) & _KIND_MODULES[kind]), None)
            reason = None if named is None else f"`ignored_layers` names {matched[named]}"
            for g in [] if reason else s.groups([kind]):
                for part in g.parts:
                    holder = next((n for n in ignored if not n or part.path.startswith(f"{n}.")), None)
                    if holder is not None:
                        now = repr(_full_name(s, holder))
                        renamed = "" if matched[holder].startswith(now) else f" (now {now})"
                        held = repr(_full_name(s, part.path))
                        reason = f"`ignored_layers` names {matched[holder]}{renamed}, which holds {held}"
                    elif frozen and not _get_param(s.model, part.path).requires_grad:  # type: ignore[union-attr]
                        reason = f"{_full_name(s, part.path)!r} is frozen (requires_grad=False)"
                    if reason:
                        break
                if reason:
                    break
            if reason is None and frozen and kind == "hidden":
                outside = _outside_modules(s)
                if outside:
                    shown = ", ".join(map(repr, outside[:4])) + (
                        f" and {len(outside) - 4} more" if len(outside) > 4 else ""
                    )
                    verb = "holds" if len(outside) == 1 else "hold"
                    reason = (
                        f"{shown} beside {type(s.model).__name__} {verb} parameters and may read its hidden states (a "
                        f"value or reward head), which a residual-width cut would leave at the old width{_OUTSIDE}"
                    )
            if reason:
                why[kind] = reason
        return why

    def kinds(self, s: LLMStructure) -> list[str]:
        """The group kinds this pruner cuts on ``s`` (after ``ignored_layers``, frozen parameters and the family).

        A kind kept whole is told once, with the module or parameter that keeps it.
        """
        why = self._excluded(s)
        if why:
            words = [_KIND_WORDS[k] for k in why]
            listed = ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1]
            fixes = []
            if any(r.endswith("(requires_grad=False)") for r in why.values()):
                fixes.append("unfreeze the parameters named")
            if any(r.startswith("`ignored_layers`") for r in why.values()):
                fixes.append("leave the modules named out of `ignored_layers`")
            if any(r.endswith(_OUTSIDE) for r in why.values()):
                fixes.append("prune a model without such modules (or set prune_hidden=False to keep it whole)")
            # Once for these kinds and causes: a removed decoder layer renames the parameters, not the reason.
            causes = tuple(sorted((k, r.startswith("`ignored_layers`")) for k, r in why.items()))
            self._warn_once(
                f"{self.owner}: {listed} {'is' if words == [_KIND_WORDS['hidden']] else 'are'} not cut in any decoder "
                "layer, as every layer keeps the same widths (one config describes the model): "
                + "; ".join(f"{_KIND_WORDS[k]}: {r}" for k, r in why.items())
                + f". To prune {'it' if words == [_KIND_WORDS['hidden']] else 'them'}, {' or '.join(fixes)}.",
                key=str(causes),
            )
        return [k for k in self._candidate_kinds(s) if k not in why]

    def _warn_once(self, message: str, key: str | None = None) -> None:
        """Warn the user once per pruner and ``key`` (the message by default), on the first process only."""
        key = message if key is None else key
        if key in self._told:
            return
        self._told.add(key)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        warnings.warn(message, UserWarning, stacklevel=3)

    def _check_family(self, s: LLMStructure) -> None:
        """Refuse what the model's family cannot take (by :meth:`check_module` and :meth:`prune` alike)."""
        if self.prune_hidden and s.family == "gpt2":
            fail(
                self.owner,
                "prune_hidden",
                True,
                "False for GPT-2: its config ties the attention width to the residual width (n_embd = n_head * "
                "head_dim), so only the MLP width can be cut",
            )

    def check_module(self, module: nn.Module, training: bool = True) -> LLMStructure:
        """Refuse what this pruner cannot do on ``module`` (in a second: no tracing) and return its structure.

        ``training=False`` (validate, test, predict): frozen parameters are not refused, since nothing is cut then
        (a model is often frozen after training).
        """
        start = time.perf_counter()
        s = self.structure(module)
        if self.importance not in LLM_IMPORTANCES:
            fail(self.owner, "importance", self.importance, f"one of {LLM_IMPORTANCES} for a Hugging Face causal LM")
        self._check_family(s)
        names = [n for n, _ in module.named_modules() if n]
        for pattern in self.ignored_layers:
            if not ChannelPruner._match(pattern, names):
                fail(
                    self.owner,
                    "ignored_layers",
                    self.ignored_layers,
                    f"names or glob patterns of modules; {pattern!r} matches none (e.g. {names[:3]})",
                )
        modules = dict(s.model.named_modules())
        for name, heads in self.num_heads.items():
            rel = name[len(s.path) + 1 :] if s.path and name.startswith(s.path + ".") else name
            leaf = rel.rpartition(".")[2]
            if rel not in modules or leaf not in ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn"):
                fail(
                    self.owner,
                    "num_heads",
                    self.num_heads,
                    f"keyed by attention projections (q_proj, k_proj, v_proj, qkv_proj, c_attn); {name!r} is not one "
                    f"(heads of a Hugging Face model are read from its config, so `num_heads` can be left out)",
                )
            want = s.kv_heads() if leaf in ("k_proj", "v_proj") else s.kv_heads() * s.q_per_kv()
            if heads != want:
                fail(self.owner, "num_heads", self.num_heads, f"{want} for {name!r} as in the model's config")
        ignored = self._excluded(s, frozen=False)
        if self.prune_layers == 0 and all(k in ignored for k in self._candidate_kinds(s)):
            reasons = "; ".join(f"{_KIND_WORDS[k]}: {why}" for k, why in ignored.items())
            fail(
                self.owner,
                "ignored_layers",
                self.ignored_layers,
                f"a list that leaves some MLP or attention to cut (every decoder layer keeps the same widths, so a "
                f"module it names keeps its kinds whole in every layer; {reasons})",
            )
        kept = self._excluded(s) if training else ignored
        if self.prune_layers == 0 and all(k in kept for k in self._candidate_kinds(s)):
            # Frozen parameters (a LoRA-style model), perhaps with ignored modules: a prune would cut nothing.
            reasons = "; ".join(f"{_KIND_WORDS[k]}: {why}" for k, why in kept.items())
            raise InvalidArgumentError(
                f"{self.owner}: nothing of {type(s.model).__name__} can be cut, as every decoder layer keeps the same "
                f"widths (one config describes the model) and a frozen parameter or an ignored module keeps its kind "
                f"whole in every layer ({reasons}). Unfreeze the parameters named (requires_grad=True) while pruning, "
                "leave the modules named out of `ignored_layers`, or set `prune_layers` to remove whole decoder layers."
            )
        if training:
            self.kinds(s)  # tells now which kinds stay whole
        self._check_layers(s)
        self._check_logits(s)
        self.analysis_s = time.perf_counter() - start
        return s

    def _check_layers(self, s: LLMStructure) -> None:
        """Refuse a ``prune_layers`` the model cannot give (counted from its dense depth: ``layers_dropped`` ago)."""
        left = self.prune_layers - self.layers_dropped
        if left <= 0:
            return
        now = len(s.blocks())
        n = now + self.layers_dropped
        if self.prune_layers >= n:
            fail(
                self.owner,
                "prune_layers",
                self.prune_layers,
                f"an int from 0 to {n - 1}: {type(s.model).__name__} has {n} decoder layers and keeps at least one",
            )
        free = len(self._droppable(s))
        if left > free:
            frozen = any(not p.requires_grad for p in s.blocks().parameters())
            keeps = "`ignored_layers` and frozen parameters keep" if frozen else "`ignored_layers` keeps"
            fail(
                self.owner,
                "prune_layers",
                self.prune_layers,
                f"at most {free + self.layers_dropped}: {keeps} {now - free} of the {n} decoder layers",
            )
        if s.family == "gpt2" and getattr(s.config, "scale_attn_by_inverse_layer_idx", False):
            fail(
                self.owner,
                "prune_layers",
                self.prune_layers,
                "0 for this GPT-2: scale_attn_by_inverse_layer_idx=True scales attention by the layer's index, which "
                "removing a layer before it would change",
            )

    def _droppable(self, s: LLMStructure) -> list[int]:
        """Decoder layers that ``prune_layers`` may remove.

        Not those ``ignored_layers`` names (or a module around them), nor those with a frozen parameter.
        """
        ignored = self._ignored(s)
        out = []
        for i, block in enumerate(s.blocks()):
            name = f"{s.layers}.{i}"
            if any(not n or n == name or name.startswith(f"{n}.") for n in ignored):
                continue
            if all(p.requires_grad for p in block.parameters()):
                out.append(i)
        return out

    def _check_logits(self, s: LLMStructure) -> None:
        ids = example_ids(s, length=4)
        was = s.model.training
        s.model.eval()
        try:
            with torch.no_grad():
                out = s.model(input_ids=ids, use_cache=False)
        finally:
            s.model.train(was)
        logits = getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor):
            _refuse(
                self.owner,
                f"{type(s.model).__name__}: its forward returns {type(out).__name__} without `logits`; wrap an "
                "AutoModelForCausalLM.",
            )

    # ------------------------------------------------------------------------------------------- interface
    def example(self, module: nn.Module, given: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids for MAC counts: ``given``, else the module's integer ``example_input_array``, else 32 fixed ids."""
        s = self.structure(module)
        x = given if given is not None else getattr(module, "example_input_array", None)
        if are_token_ids(x):
            return x.to(next(s.model.parameters()).device)
        return example_ids(s)

    def count(self, module: nn.Module, example_inputs: Any = None) -> tuple[float, int]:
        """MACs and parameters of the HF model over ``example_inputs`` (token ids; ``None``: fixed ids)."""
        s = self.structure(module)
        return count_llm_macs(s, _token_ids(s, example_inputs))

    def channels(self, module: nn.Module, example_inputs: Any = None) -> dict[str, list[int]]:
        """Dense widths ``{kind: [width, width]}`` (the callback's record for ``max_layer_ratio``)."""
        s = self.structure(module)
        n = len(s.blocks())
        return {**{k: [v, v] for k, v in s.widths().items()}, "layers": [n, n]}

    # ---------------------------------------------------------------------------------------- activations
    def observe(self, module: nn.Module) -> None:
        """Hook the probes: while :attr:`recording`, sum |input| per unit and each layer's Block Influence.

        Units are hooked for ``"activation"`` importance, decoder layers while ``prune_layers`` has some left to remove.
        """
        self.release()
        s = self.structure(module)
        if self.importance == "activation":
            for g in s.groups(self.kinds(s)):
                key = f"{g.kind}{_SEP}{g.layer}"
                m = s.model.get_submodule(g.probe)
                self._hooks.append(m.register_forward_hook(self._hook(key, g.probe_rows)))
        if self.prune_layers > self.layers_dropped:
            for i, block in enumerate(s.blocks()):
                self._hooks.append(block.register_forward_hook(self._influence_hook(i), with_kwargs=True))

    def _influence_hook(self, layer: int) -> Callable[..., None]:
        """Sums the layer's Block Influence (1 - cos(input, output), mean over tokens) per recorded batch."""
        key = f"layers{_SEP}{layer}"

        def hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            if not self.recording:
                return
            io = _layer_io(args, kwargs, output)
            if io is None:
                return
            with torch.no_grad():
                x, y = (t.detach().float() for t in io)
                bi = float((1.0 - F.cosine_similarity(x, y, dim=-1)).mean())
                if not math.isfinite(bi):  # a NaN/inf batch (a step AMPScheduler skips): left out of this layer's mean
                    return
                # [sum, batches]: a batch may go non-finite from some layer on, so layers count their own batches
                acc = self._stats.get(key)
                new = torch.tensor([bi, 1.0])
                self._stats[key] = new if acc is None or acc.numel() != 2 else acc + new

        return hook

    def _hook(self, key: str, rows: int) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if not self.recording or not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            with torch.no_grad():
                x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).mean(0)
                x = x.reshape(-1, rows).sum(1)
                # A batch with a NaN/inf (a step AMPScheduler skips) adds nothing to this layer's units, else their sums
                # are NaN and the prune cuts by index; on the device, without a sync per layer and batch.
                x = torch.where(torch.isfinite(x).all(), x, torch.zeros_like(x))
                acc = self._stats.get(key)
                self._stats[key] = x if acc is None or acc.shape != x.shape else acc + x

        return hook

    def reset_activations(self) -> None:
        """Forget the recorded activations (after a prune the units are others)."""
        self._stats = {}

    @property
    def recorded(self) -> dict[str, torch.Tensor]:
        """The activation and Block Influence sums recorded since the last prune, by ``"<kind>::<layer>"``.

        A copy of the mapping (the tensors themselves are shared): what a checkpoint inside an importance window
        saves, and gives back with :meth:`restore_recorded`.
        """
        return dict(self._stats)

    def restore_recorded(self, stats: Mapping[str, torch.Tensor]) -> None:
        """Continue from sums :attr:`recorded` returned (a run resumed inside an importance window)."""
        self._stats = dict(stats)

    def release(self) -> None:
        """Remove the activation hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._stats = {}
        self.recording = False

    # ---------------------------------------------------------------------------------------------- scores
    def _scores(self, s: LLMStructure, groups: list[Group], gradients: Mapping[str, torch.Tensor] | None) -> list:
        out = []
        prefix = f"{s.path}." if s.path else ""
        for g in groups:
            if self.importance == "random":
                out.append(torch.rand(g.units))
                continue
            if self.importance == "activation":
                acc = self._stats.get(f"{g.kind}{_SEP}{g.layer}")
                if acc is None or acc.numel() != g.units or not bool(torch.isfinite(acc).all() and acc.any()):
                    fail(
                        self.owner,
                        "importance",
                        self.importance,
                        "a criterion with data: no (finite) activations were recorded for "
                        f"{g.kind} of layer {g.layer} before this prune",
                    )
                out.append(acc.detach().cpu())
                continue
            total = torch.zeros(g.units)
            for part in g.parts:
                w = _get_param(s.model, part.path)
                if w is None:
                    continue
                t = w.detach().float()
                if self.importance == "taylor":
                    grad = (gradients or {}).get(prefix + part.path)
                    if grad is None:
                        continue
                    t = (t * grad.to(t.device).float().reshape(t.shape)).abs()
                elif self.importance == "magnitude-l1":
                    t = t.abs()
                else:
                    t = t.pow(2)
                per_row = t.transpose(0, part.dim).reshape(t.shape[part.dim], -1).sum(1).cpu()
                for offset, size in part.segments:
                    total += per_row[offset : offset + g.units * size].reshape(g.units, size).sum(1)
            out.append(total)
        return out

    # --------------------------------------------------------------------------------------------- pruning
    def check_ratio(self, module: nn.Module, ratio: float) -> None:
        """Refuse a ``ratio`` that would remove every unit of a group (the two KV heads of a layer at 0.8)."""
        s = self.structure(module)
        for kind in self.kinds(s):
            units = s.widths()[kind]
            if _kept_after(units, ratio) < 1:
                what = {"heads": "attention head (KV group)", "mlp": "MLP unit", "hidden": "residual channel"}[kind]
                fix = "ignored_layers=['*self_attn*'] to keep the heads" if kind == "heads" else "a smaller ratio"
                fail(
                    self.owner,
                    "pruning_ratio",
                    ratio,
                    f"below {1 - 0.5 / units:.3g}: it would remove every {what} of each layer ({units} of {units}); "
                    f"use a smaller ratio or {fix}",
                )

    def _plan(
        self,
        s: LLMStructure,
        groups: list[Group],
        scores: list[torch.Tensor],
        ratio: float,
        dense: Mapping[str, Sequence[int]] | None,
        final: bool,
        pinned: Mapping[str, int] | None = None,
    ) -> dict[int, list[int]]:
        """Units to remove per group at ``ratio``, fitted to the config (``pinned``: units to remove of those kinds)."""
        self._could_cut, self._accepted_cuts = {}, {}
        self._fitted = self._counts(s, groups, ratio, dense, final, pinned)
        fitted = self._fitted[1]
        plan = {}
        for gi, g in enumerate(groups):
            if fitted[g.kind]:
                plan[gi] = sorted(torch.argsort(scores[gi], stable=True)[: fitted[g.kind]].tolist())
        return plan

    def _counts(
        self,
        s: LLMStructure,
        groups: list[Group],
        ratio: float,
        dense: Mapping[str, Sequence[int]] | None,
        final: bool,
        pinned: Mapping[str, int] | None = None,
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Units to remove in each group of a kind (every layer alike): as ``ratio`` asks, and as the plan cuts them.

        The plan cuts the ``pinned`` counts (widths the config accepts, chosen by :meth:`_search`) and the others at
        ``ratio``; without ``pinned``, all at ``ratio`` fitted to the config (:meth:`_fit_config`).
        """
        counts: dict[str, int] = {}
        for g in groups:
            if g.kind not in counts:
                d = int(dense[g.kind][0]) if dense and g.kind in dense else g.units
                round_to = self.round_to if g.kind != "heads" else None
                if round_to:
                    self._check_round_to(g.kind, d)
                goal = self._goal if dense and g.kind in dense else None
                counts[g.kind] = _removed_count(g.units, d, ratio, self.max_layer_ratio, round_to, goal, final)
        if pinned is None:
            return counts, self._fit_config(s, counts, dense, final)
        return counts, {**counts, **{k: n for k, n in pinned.items() if k in counts}}

    def _check_round_to(self, kind: str, dense: int) -> None:
        """Say once when ``round_to`` and ``max_layer_ratio`` together leave a kind nothing to cut."""
        floor_keep = _least_kept(dense, dense, self.max_layer_ratio)
        lowest = _least_multiple(floor_keep, self.round_to)  # type: ignore[arg-type]
        if lowest >= dense:
            self._warn_once(
                f"{self.owner}: {_KIND_WORDS[kind]} {'is' if kind == 'hidden' else 'are'} never cut: "
                f"round_to={self.round_to} with "
                f"max_layer_ratio={self.max_layer_ratio:g} allows no multiple of {self.round_to} between the "
                f"{floor_keep} a layer must keep and its {dense}; use a smaller round_to or a larger max_layer_ratio.",
                key=f"round-{kind}",
            )

    def _fit_config(
        self,
        s: LLMStructure,
        counts: dict[str, int],
        dense: Mapping[str, Sequence[int]] | None,
        final: bool,
    ) -> dict[str, int]:
        """``counts`` moved to the nearest head count and residual width that the family's config accepts.

        On a tie the one that cuts less; within ``max_layer_ratio`` and ``round_to`` as before.
        """
        best: tuple[tuple[float, int, int], int, int] | None = None
        k0, w0 = s.kv_heads(), s.hidden()
        k_want, w_want = k0 - counts.get("heads", 0), w0 - counts.get("hidden", 0)
        for k, options in self._accepted(s, counts.keys(), dense, final):
            i = bisect.bisect_left(options, w_want)
            for w in options[max(0, i - 1) : i + 1]:
                key = (abs(k - k_want) / k0 + abs(w - w_want) / w0, -k, -w)
                if best is None or key < best[0]:
                    best = (key, k, w)
        if best is None:
            return counts
        fitted = dict(counts)
        if "heads" in fitted:
            fitted["heads"] = k0 - best[1]
        if "hidden" in fitted:
            fitted["hidden"] = w0 - best[2]
        return fitted

    def _accepted(
        self, s: LLMStructure, kinds: Iterable[str], dense: Mapping[str, Sequence[int]] | None, final: bool
    ) -> list[tuple[int, list[int]]]:
        """``(KV heads, residual widths)`` the config accepts within ``max_layer_ratio`` and ``round_to``.

        Heads ascending, widths ascending. Empty when the config ties no widths (:func:`_config_rule`), neither
        heads nor the residual width is among ``kinds``, or the config refused the model before any cut of ours.
        """
        kinds = set(kinds)
        # With `round_to`, the residual width (one for the whole model, coarse in MACs) keeps a multiple of it at
        # every prune, as if the config required it: the final prune then need not round it down far past the goal
        # (2x asked, 2.5x cut), and the search trades it against the other kinds.
        step = self.round_to if self.round_to and "hidden" in kinds else None
        rule = _config_rule(s) or (("", lambda q, lo, hi: list(range(lo, hi + 1))) if step else None)
        if rule is None or not {"heads", "hidden"} & kinds:
            return []
        widths = rule[1]
        g, k0, w0 = s.q_per_kv(), s.kv_heads(), s.hidden()
        if w0 not in widths(k0 * g, w0, w0):  # refused before any cut of ours: nothing to keep
            return []

        def least(kind: str, units: int) -> int:
            d = int(dense[kind][0]) if dense and kind in dense else units
            return _least_kept(units, d, self.max_layer_ratio) if kind in kinds else units

        out = []
        for k in range(least("heads", k0), k0 + 1):
            # The width kept whole is no exception to `round_to`, unless no multiple of it is allowed: a dense width
            # off any multiple (576 with round_to=128) is cut to one at the first prune. Kept whole until the last,
            # the MLP was cut for the target meanwhile and the last prune cut both (1.86x for 1.3x asked, not 1.5x).
            allowed = widths(k * g, least("hidden", w0), w0)
            multiples = [w for w in allowed if w % step == 0] if step else allowed
            options = multiples if multiples or w0 not in allowed else [w0]
            if options:
                out.append((k, options))
        return out

    def _tell_fitted(self, s: LLMStructure) -> None:
        """Say once why a kind one ratio would cut was kept whole: the config's rule, or the target search's choice."""
        wanted, fitted = self._fitted
        if wanted == fitted:
            return
        rule = _config_rule(s)
        log.debug("%s: cuts fitted to the config's widths: %s -> %s units removed", self.owner, wanted, fitted)
        for kind in ("heads", "hidden"):
            if not wanted.get(kind) or fitted.get(kind):
                continue
            them = "it" if kind == "hidden" else "them"
            could = self._could_cut.get(kind)
            why = None
            if could is not None:
                why = (
                    f"would go {could:.0%} past the prune's MAC goal"
                    if could > _SEARCH_SLACK
                    else "reaches the prune's MAC goal too but leaves the shares cut of each kind less even (less "
                    "room for later prunes: a cut is never undone)"
                )
            if why is not None and wanted[kind] in self._accepted_cuts.get(kind, set()):
                # The config accepts the cut one ratio asks for: keeping the kind whole is the plan's choice.
                allows = (
                    f"that this {type(s.config).__name__} accepts"
                    if rule is not None
                    else f"to a multiple of round_to={self.round_to}"
                )
                self._warn_once(
                    f"{self.owner}: {_KIND_WORDS[kind]} {'is' if kind == 'hidden' else 'are'} kept whole at this "
                    f"prune: the smallest cut of {them} {allows} {why}; the other kinds are cut instead.",
                    key=f"search-{kind}",
                )
            elif rule is not None:
                also = (
                    " Set prune_hidden=True to cut the heads together with the residual width."
                    if kind == "heads" and "hidden" not in fitted
                    else ""
                )
                smallest = f"; the smallest cut of {them} it accepts {why}" if why is not None else ""
                self._warn_once(
                    f"{self.owner}: {_KIND_WORDS[kind]} of this {type(s.config).__name__} "
                    f"{'is' if kind == 'hidden' else 'are'} kept whole where a cut would break its config, which "
                    f"requires {rule[0]}{smallest}; the other kinds are cut instead.{also}",
                    key=f"config-{kind}",
                )

    def prune(
        self,
        module: nn.Module,
        example_inputs: Any = None,
        *,
        ratio: float | None = None,
        target_macs: float | None = None,
        dense_channels: Mapping[str, Sequence[int]] | None = None,
        gradients: Mapping[str, torch.Tensor] | None = None,
        final: bool = True,
        goal: float | None = None,
    ) -> PruneResult:
        """Cut ``ratio`` of every group's current units, or the least until MACs are at most ``target_macs``.

        ``goal`` (with ``ratio`` and ``dense_channels``): the share of the dense units to be gone after this cut (one
        prune of an iterative schedule); each group kind is cut to that share of its dense units (rounded to the
        nearest), not ``ratio`` of its units now, so the roundings of a schedule's prunes do not add up.

        When the cut model fails its MAC count (a module of the model's own, outside the decoder blocks, reads a cut
        width), the result's ``error`` says so and the model is left cut: the caller undoes it
        (:func:`~lightning_green.pruning.verify.prune_verified` does, config included).
        """
        if (ratio is None) == (target_macs is None):
            raise ValueError("give exactly one of `ratio` and `target_macs`")
        if ratio is not None and not 0 <= ratio < 1:
            fail(self.owner, "pruning_ratio", ratio, "in [0, 1): a ratio of 1 would remove every head of a layer")
        if ratio is not None:
            self.check_ratio(module, ratio)
        s = self.structure(module)
        self._check_family(s)  # the pruner alone too: a GPT-2 cut in its residual width only would not run
        ids = _token_ids(s, example_inputs)
        result = PruneResult()
        lineage = Lineage()
        entries: list = []
        dropped = self._drop_some_layers(module, s, ids, dense_channels, gradients)
        if dropped is not None:
            entries.append(dropped[0])
            gradients = dropped[1]
        kinds = self.kinds(s)
        groups = s.groups(kinds)
        scores = self._scores(s, groups, gradients)
        start, _ = count_llm_macs(s, ids)
        if ratio is not None:
            self._goal = goal if dense_channels else None
            try:
                plan = self._plan(s, groups, scores, ratio, dense_channels, final)
            finally:
                self._goal = None
            asked = self._fitted[0]  # units per kind the goal (or ratio) asks to remove
            by_goal = goal is not None and bool(dense_channels) and bool(asked)
            result.needed = (any(n > 0 for n in asked.values()) if by_goal else ratio > 0) or dropped is not None
        else:
            over = start > target_macs  # type: ignore[operator]
            # The final prune rounds to `round_to` also when an earlier one already reached the target (it ended at
            # 97 units with round_to=16): the least cut under the target is then the rounding alone.
            if over:
                plan = self._search(s, groups, scores, target_macs, dense_channels, final, ids)
            else:  # the target is met: at the final prune only the rounding (the search may prefer a larger cut)
                plan = self._plan(s, groups, scores, 0.0, dense_channels, final) if final and self.round_to else {}
            result.needed = over or dropped is not None
        if plan:
            self._tell_fitted(s)
        entries += self._apply(s, groups, plan, lineage)
        for p in module.parameters():
            p.grad = None
        result.entries = entries
        result.lineage = lineage
        self._stats = {}
        try:
            result.macs, result.params = count_llm_macs(s, ids)
        except Exception as exc:  # the cut broke the model (a module of its own reads the cut width): say so
            result.error = f"the cut model fails its MAC count ({first_line(exc)})"
            return result
        if target_macs is not None:
            result.reached = result.macs <= target_macs
        return result

    def _drop_some_layers(
        self,
        module: nn.Module,
        s: LLMStructure,
        ids: torch.Tensor,
        dense: Mapping[str, Sequence[int]] | None,
        gradients: Mapping[str, torch.Tensor] | None,
    ) -> tuple[list, Mapping[str, torch.Tensor] | None] | None:
        """Remove the layers ``prune_layers`` still asks for; ``(history entry, gradients renamed)`` or ``None``."""
        n = len(s.blocks())
        dense_n = int(dense["layers"][0]) if dense and "layers" in dense else n + self.layers_dropped
        want = self.prune_layers - (dense_n - n)
        if want <= 0:
            return None
        candidates = self._droppable(s)
        influence = self._influence(s, candidates, ids)
        # Least influence first; on a tie the later layer (deeper layers are the more redundant ones).
        order = sorted(candidates, key=lambda i: (float(influence[i]), -i))
        removed = sorted(order[: min(want, len(candidates), n - 1)])
        if not removed:
            return None
        hooked = bool(self._hooks)
        new_index = _drop_layers(s, removed)
        self.layers_dropped += len(removed)
        log.info("%s: removed decoder layers %s (Block Influence %s)", self.owner, removed, influence)
        # Recorded activations and gradients were keyed by the old layer numbers.
        stats = {}
        for key, value in self._stats.items():
            kind, _, layer = key.partition(_SEP)
            if kind == "layers":
                continue
            if layer.isdigit():
                if int(layer) not in new_index:
                    continue
                key = f"{kind}{_SEP}{new_index[int(layer)]}"
            stats[key] = value
        if hooked:
            recording = self.recording
            self.observe(module)  # hooks keyed by the new layer numbers
            self.recording = recording
        self._stats = stats
        if gradients is not None:
            gradients = _renumber_paths(gradients, f"{s.path}.{s.layers}." if s.path else f"{s.layers}.", new_index)
        return [_entry_name(s.path, Group("layers", None, n)), True, removed], gradients

    def _influence(self, s: LLMStructure, layers: Sequence[int], ids: torch.Tensor) -> dict[int, float]:
        """Block Influence of ``layers``: recorded over training batches, else measured on ``ids`` now."""
        recorded = {i: self._stats.get(f"layers{_SEP}{i}") for i in layers}
        if all(v is not None for v in recorded.values()):
            return {i: _mean_influence(v) for i, v in recorded.items()}  # type: ignore[arg-type]
        saved, self._stats = self._stats, {}
        hooks = [b.register_forward_hook(self._influence_hook(i), with_kwargs=True) for i, b in enumerate(s.blocks())]
        recording, self.recording = self.recording, True
        was = s.model.training
        s.model.eval()
        try:
            with torch.no_grad():
                s.model(input_ids=ids, use_cache=False)
            found = {i: self._stats.get(f"layers{_SEP}{i}") for i in layers}
            if any(v is None for v in found.values()):
                fail(
                    self.owner,
                    "prune_layers",
                    self.prune_layers,
                    "a count of layers whose Block Influence can be measured: the model's output on the example is "
                    "not finite (NaN/inf weights?)",
                )
            measured = {i: _mean_influence(v) for i, v in found.items()}  # type: ignore[arg-type]
        finally:
            s.model.train(was)
            self.recording = recording
            for h in hooks:
                h.remove()
            self._stats = saved
        return measured

    def _apply(self, s: LLMStructure, groups: list[Group], plan: Mapping[int, list[int]], lineage: Lineage) -> list:
        plan = self._valid_plan(s, groups, plan)
        _cut(s.model, groups, plan, lineage)
        s.sync_config()
        return [[_entry_name(s.path, g), True, list(plan[gi])] for gi, g in enumerate(groups) if plan.get(gi)]

    def _valid_plan(
        self, s: LLMStructure, groups: list[Group], plan: Mapping[int, list[int]]
    ) -> Mapping[int, list[int]]:
        """``plan`` less the cuts that transformers' own check of the config refuses, so the model stays saveable.

        The plan already keeps to the rules this module knows (:func:`_config_rule`); this catches any other rule a
        family's config has. Head cuts go first, then residual cuts, then all; said once.
        """
        if not plan or _config_error(copy.deepcopy(s.config)) is not None:
            return plan  # nothing to cut, or a config refused before this cut: nothing to keep valid
        first = None
        for drop in (set(), {"heads"}, {"hidden"}, {"heads", "hidden"}, {"mlp", "heads", "hidden"}):
            kept = {gi: idx for gi, idx in plan.items() if groups[gi].kind not in drop}
            if drop and len(kept) == len(plan):
                continue
            error = _config_error(_config_after(s, groups, kept))
            if error is None:
                if drop:
                    words = " and ".join(_KIND_WORDS[k] for k in ("mlp", "heads", "hidden") if k in drop)
                    self._warn_once(
                        f"{self.owner}: {type(s.config).__name__} refuses the widths this prune would leave "
                        f"({first}), so {words} {'is' if drop == {'hidden'} else 'are'} not cut at this prune and the "
                        "model stays saveable."
                    )
                return kept
            first = first or error
        return {}

    def _search(
        self,
        s: LLMStructure,
        groups: list[Group],
        scores: list[torch.Tensor],
        target: float,
        dense: Mapping[str, Sequence[int]] | None,
        final: bool,
        ids: torch.Tensor,
    ) -> dict[int, list[int]]:
        """The least cut that brings MACs to ``target`` (bisection on an exact per-layer model).

        One layer-wise count of the current model gives each layer's MACs; a cut scales a layer by the kept share
        of each of its weight's dimensions, so every try is arithmetic, not a forward. Without a rule on widths, one
        ratio for every kind. Where the family's config accepts only some widths (Llama: 1, 2, 4 or 8 heads in a
        128-wide model; Phi-3 longrope: the residual width follows the heads), each accepted head count and residual
        width is pinned in turn and the ratio found for the other kinds alone; of the plans that reach ``target``
        and leave within ``_SEARCH_SLACK`` (3 %) of the most MACs, the one whose kinds keep the most even shares of
        their dense widths wins (so later steps of a schedule still have room), else the one leaving the fewest MACs.
        """
        estimate = _mac_model(s, groups, ids)
        kinds = {g.kind for g in groups}

        def solve(pin: Mapping[str, int] | None) -> tuple[float, float]:
            """The smallest ratio (of the kinds not pinned) that reaches ``target``, and its MACs."""

            def macs(r: float) -> float:
                return estimate(self._counts(s, groups, r, dense, final, pin)[1])

            if pin is not None and kinds <= pin.keys():
                return 0.0, macs(0.0)
            lo, hi = 0.0, min(self.max_layer_ratio, 0.999)
            if macs(hi) > target:
                return hi, macs(hi)
            for _ in range(20):
                mid = (lo + hi) / 2
                if macs(mid) <= target:
                    hi = mid
                else:
                    lo = mid
            return hi, macs(hi)

        accepted = self._accepted(s, kinds, dense, final)
        if not accepted:
            return self._plan(s, groups, scores, solve(None)[0], dense, final)
        k0, w0 = s.kv_heads(), s.hidden()
        tries: list[tuple[float, float, dict[str, int]]] = []
        for k, options in reversed(accepted):  # most heads and widest first: they win a tie
            for w in reversed(options):
                pin = {kind: n for kind, n in (("heads", k0 - k), ("hidden", w0 - w)) if kind in kinds}
                r, m = solve(pin)
                tries.append((m, r, pin))
                if m <= target and r == 0.0:
                    break  # narrower widths with this head count leave fewer MACs
        reached = [t for t in tries if t[0] <= target]
        if not reached:
            _, r, pin = min(tries, key=lambda t: t[0])
            return self._plan(s, groups, scores, r, dense, final, pin)
        # A schedule's later prunes need room in every kind (a cut is never undone): of the plans within
        # _SEARCH_SLACK of the least cut, the one whose kinds keep the most even shares of their dense widths.
        most = max(t[0] for t in reached)

        def spread(r: float, pin: Mapping[str, int]) -> float:
            fitted = self._counts(s, groups, r, dense, final, pin)[1]
            shares = []
            for g in groups:
                d = int(dense[g.kind][0]) if dense and g.kind in dense else g.units
                shares.append((g.units - fitted[g.kind]) / d)
            return max(shares) - min(shares)

        close = [t for t in reached if t[0] >= most * (1 - _SEARCH_SLACK)]
        _, r, pin = min(close, key=lambda t: (spread(t[1], t[2]), -t[0]))
        plan = self._plan(s, groups, scores, r, dense, final, pin)
        # A kind left whole although the config accepted a cut of it: the search's choice, not the config's rule.
        self._accepted_cuts = {
            "heads": {k0 - k for k, _ in accepted},
            "hidden": {w0 - w for _, options in accepted for w in options},
        }
        for kind in ("heads", "hidden"):
            cuts = [m for m, _, p in reached if p.get(kind)]
            if cuts and not pin.get(kind):
                self._could_cut[kind] = 1.0 - max(cuts) / target  # how far past the goal the least such cut goes
        # What one ratio for every kind would cut, as the config's rule (not this choice) is what users are told of.
        lo, hi = 0.0, min(self.max_layer_ratio, 0.999)
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if estimate(self._counts(s, groups, mid, dense, final, {})[0]) <= target else (mid, hi)
        self._fitted = (self._counts(s, groups, hi, dense, final, {})[0], self._fitted[1])
        return plan


#: How far below the least cut's MACs a more even plan may go under a target (:meth:`LLMPruner._search`).
_SEARCH_SLACK = 0.03


def _mac_model(s: LLMStructure, groups: list[Group], ids: torch.Tensor) -> Callable[[Mapping[str, int]], float]:
    """``units removed per kind → MACs after that cut``, from one layer-wise count (linear layers scale with in x out).

    Every layer keeps the same widths, so the layers that the same kinds cut at the same dimensions add up to one
    term: a try costs a few multiplications, whatever the depth.
    """
    base = {m: float(v) for m, v in _layer_macs(s.model, ids).items() if v and not list(m.children())}
    cuts: dict[tuple[nn.Module, int], list[tuple[str, int]]] = {}
    for g in groups:
        for part in g.parts:
            owner, _, attr = part.path.rpartition(".")
            if attr == "weight":
                cuts.setdefault((s.model.get_submodule(owner), part.dim), []).append((g.kind, g.units))
    terms: dict[tuple[tuple[tuple[str, int], ...], ...], float] = {}
    for m, v in base.items():
        key = tuple(tuple(sorted(cuts.get((m, dim), []))) for dim in (0, 1))
        terms[key] = terms.get(key, 0.0) + v

    def estimate(removed: Mapping[str, int]) -> float:
        total = 0.0
        for key, v in terms.items():
            for dims in key:
                for kind, units in dims:
                    v *= 1.0 - removed.get(kind, 0) / units
            total += v
        return total

    return estimate


def _renumber_paths(named: Mapping[str, Any], prefix: str, new_index: Mapping[int, int]) -> dict[str, Any]:
    """``named`` with ``<prefix><old layer>.`` renamed to ``<prefix><new layer>.``; removed layers' entries dropped."""
    out = {}
    for name, value in named.items():
        if name.startswith(prefix):
            layer, dot, rest = name[len(prefix) :].partition(".")
            if layer.isdigit() and dot:
                if int(layer) not in new_index:
                    continue
                name = f"{prefix}{new_index[int(layer)]}.{rest}"
        out[name] = value
    return out


def renumber_after_layer_drops(
    named: Mapping[str, Any], entries: Sequence[Sequence[Any]], prefix: str, layers_now: int
) -> dict[str, Any]:
    """``named`` (keyed by parameter name) as after the ``layers`` entry in ``entries`` removed its decoder layers.

    ``prefix`` is the name of the decoder-layer list followed by a dot (``"model.model.layers."``) and
    ``layers_now`` the layer count after the removal. Without such an entry, ``named`` comes back as it is.

    Example:
        >>> state = {"m.layers.0.w": 0, "m.layers.2.w": 2}
        >>> renumber_after_layer_drops(state, [["::layers::", True, [1]]], "m.layers.", 2)
        {'m.layers.0.w': 0, 'm.layers.1.w': 2}
    """
    removed = sorted({int(i) for e in entries if is_layer_drop(e) for i in e[2]})
    if not removed:
        return dict(named)
    kept = [i for i in range(layers_now + len(removed)) if i not in set(removed)]
    return _renumber_paths(named, prefix, {old: new for new, old in enumerate(kept)})


def _entry_name(path: str, g: Group) -> str:
    return f"{path}{_SEP}{g.kind}{_SEP}{'' if g.layer is None else g.layer}"


def replay_llm(module: nn.Module, entries: Sequence[Sequence[Any]], owner: str = "load_pruned") -> Lineage:
    """Cut a freshly built ``module`` as the :class:`LLMPruner` entries say (in order) and return the lineage.

    The entries of one prune come kind by kind, layer by layer; each such run is cut from the widths of the config
    before it, then the config follows, exactly as :meth:`LLMPruner.prune` did.
    """
    lineage = Lineage()
    s = analyse(module, owner)
    if s is None:
        raise InvalidArgumentError(f"{owner}: the history prunes a Hugging Face model, but the module holds none")
    runs: list[tuple[str, dict[str, list[int]]]] = []
    for name, _, idxs in entries:
        path, kind, layer = str(name).split(_SEP)
        if path != s.path:
            raise InvalidArgumentError(
                f"{owner}: the history prunes a model at {path!r}, the module has one at {s.path!r}"
            )
        if not runs or runs[-1][0] != kind or layer in runs[-1][1]:
            runs.append((kind, {}))
        runs[-1][1][layer] = [int(i) for i in idxs]
    for kind, cuts in runs:
        if kind == "layers":
            removed = cuts.get("", [])
            n = len(s.blocks())
            if not removed or any(not 0 <= i < n for i in removed) or len(set(removed)) >= n:
                raise InvalidArgumentError(
                    f"{owner}: the history removes decoder layers {removed}, which the model's {n} layers do not allow"
                )
            _drop_layers(s, removed)
            continue
        groups = s.groups([kind])
        by_layer = {("" if g.layer is None else str(g.layer)): gi for gi, g in enumerate(groups)}
        unknown = [layer for layer in cuts if layer not in by_layer]
        if unknown:
            raise InvalidArgumentError(
                f"{owner}: the history cuts {kind} of layer {unknown[0]!r}, which the model lacks"
            )
        _cut(s.model, groups, {by_layer[layer]: idxs for layer, idxs in cuts.items()}, lineage)
        s.sync_config()
    return lineage
