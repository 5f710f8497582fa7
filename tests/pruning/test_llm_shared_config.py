"""LLMPruner beside other modules: a teacher sharing the student's config, a head reading the residual stream."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import transformers as tf  # noqa: E402

from lightning_green.pruning.llm import LLMPruner, analyse  # noqa: E402
from lightning_green.testing.hf import tiny_causal_lm_config  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 250]])


class _Distill(nn.Module):
    """A student and a frozen teacher built from one config object (transformers keeps the object it is given)."""

    def __init__(self, family: str) -> None:
        super().__init__()
        cfg = tiny_causal_lm_config(family)
        torch.manual_seed(0)
        self.student = tf.AutoModelForCausalLM.from_config(cfg)
        self.teacher = tf.AutoModelForCausalLM.from_config(cfg).requires_grad_(False).eval()


def _configs_held(model: nn.Module) -> set[int]:
    """Ids of the config objects the model's modules hold (the model, attention, MLP, rotary embedding...)."""
    return {id(v) for m in model.modules() for k, v in vars(m).items() if k == "config"}


@pytest.mark.parametrize(("family", "prune_layers"), [("llama", 1), ("phi3", 0), ("qwen3", 1), ("gpt2", 0)])
def test_pruning_the_student_leaves_a_teacher_sharing_its_config_unchanged(family, prune_layers):
    module = _Distill(family)
    assert module.student.config is module.teacher.config
    dense = module.teacher.config.to_dict()
    with torch.no_grad():
        before = module.teacher(IDS).logits
    LLMPruner(prune_layers=prune_layers).prune(module, ratio=0.5)
    with torch.no_grad():
        assert torch.equal(module.teacher(IDS).logits, before)
    assert module.teacher.config.to_dict() == dense
    student = module.student
    assert _configs_held(student) == {id(student.config)}  # every module of the student holds its own copy
    assert id(module.teacher.config) not in _configs_held(student)
    s = analyse(student)
    assert len(s.blocks()) == s.config.num_hidden_layers == 2 - prune_layers
    assert s.mlp_width() == 64  # the student's config follows its weights (which its forward checks below)
    with torch.no_grad():
        assert student.eval()(IDS).logits.shape == before.shape


def test_a_teacher_beside_the_named_model_is_seen_through_the_scope():
    module = _Distill("llama")
    pruner = LLMPruner()
    pruner.scope = module  # what StructuredPruning(module="student") sets: the LightningModule around it
    pruner.prune(module.student, ratio=0.5)
    assert module.teacher.config.intermediate_size == 128
    assert module.student.config.intermediate_size == 64


def test_a_replayed_cut_leaves_a_teacher_sharing_the_config_unchanged():
    # A resume, load_pruned or a DDP rank replaying rank 0's cut sees only the student (no scope): the teacher's
    # config got the student's widths and depth.
    from lightning_green.pruning.llm import replay_llm

    run = _Distill("llama")
    entries = LLMPruner(prune_layers=1).prune(run.student, ratio=0.5).entries
    module = _Distill("llama")
    with torch.no_grad():
        before = module.teacher(IDS).logits
    replay_llm(module.student, entries)
    with torch.no_grad():
        assert torch.equal(module.teacher(IDS).logits, before)
    assert (module.teacher.config.num_hidden_layers, module.teacher.config.intermediate_size) == (2, 128)
    assert (module.student.config.num_hidden_layers, module.student.config.intermediate_size) == (1, 64)


def test_a_teacher_kept_out_of_the_module_tree_is_left_unchanged():
    # A frozen teacher held in a tuple (out of state_dict and the optimizer) is no submodule, but shares the config.
    module = _Distill("llama")
    teacher = module.teacher
    del module.teacher
    module._teacher = (teacher,)
    with torch.no_grad():
        before = teacher(IDS).logits
    LLMPruner(prune_layers=1).prune(module, ratio=0.5)
    with torch.no_grad():
        assert torch.equal(teacher(IDS).logits, before)
    assert teacher.config.num_hidden_layers == 2 and module.student.config.num_hidden_layers == 1


def test_a_config_held_only_around_the_model_is_written_in_place():
    cfg = tiny_causal_lm_config("llama")

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = cfg  # a LightningModule's own reference: it follows the model
            self.model = tf.LlamaForCausalLM(cfg)

    module = Wrapper()
    LLMPruner().prune(module, ratio=0.5)
    assert module.model.config is cfg and cfg.intermediate_size == 64


@pytest.mark.parametrize("cls", ["LlamaForSequenceClassification", "LlamaForTokenClassification", "LlamaModel"])
def test_the_no_logits_refusal_suggests_the_causal_lm_class(cls):
    model = getattr(tf, cls)(tiny_causal_lm_config("llama"))
    with pytest.raises(ValueError, match=rf"{cls}: it has no language-model head.*\(e\.g\. LlamaForCausalLM\) instead"):
        LLMPruner().check_module(model)


class _ValueHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = tf.AutoModelForCausalLM.from_config(tiny_causal_lm_config("llama"))
        self.value_head = nn.Linear(64, 1)  # reads hidden_states[-1]: it would keep the old width


def test_a_head_beside_the_model_keeps_the_residual_width():
    module = _ValueHead()
    with pytest.warns(UserWarning, match=r"the residual width: 'value_head' beside LlamaForCausalLM holds parameters"):
        LLMPruner(prune_hidden=True).prune(module, ratio=0.5)
    assert module.model.config.hidden_size == 64
    assert module.model.config.intermediate_size == 64  # the widths inside the blocks are cut
    hidden = module.model(IDS, output_hidden_states=True).hidden_states[-1]
    assert module.value_head(hidden).shape == (1, 8, 1)


def test_a_frozen_teacher_does_not_keep_the_residual_width():
    module = _Distill("llama")
    LLMPruner(prune_hidden=True).prune(module, ratio=0.5)
    assert module.student.config.hidden_size < 64
    assert module.teacher.config.hidden_size == 64
