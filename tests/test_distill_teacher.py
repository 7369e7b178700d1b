"""Distillation after one-shot pruning: the pruned student learns from the dense model kept from before."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build, inputs

import hfprune


def test_an_explicit_teacher_is_used_as_is():
    dense = build("bert").eval()
    student = build("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # train mode, same outputs
    hfprune.remove_heads(student, {"encoder.0.attention": [0, 1]})
    hfprune.remove_neurons(student, {"encoder.1.ffn": list(range(10))})
    batch = {**inputs("bert"), "labels": torch.tensor([0, 1])}
    distiller = hfprune.Distiller(student.train(), {"alpha": 0.5, "temperature": 2.0}, teacher=dense)
    assert distiller.teacher is dense and all(p.requires_grad for p in dense.parameters()), "the owner's model"
    blended = student(**batch).loss
    with torch.no_grad():
        student.eval()
        plain = student(**batch)
        teacher_logits = dense(**{k: v for k, v in batch.items() if k != "labels"}).logits
    kl = torch.nn.functional.kl_div((plain.logits / 2).log_softmax(-1), (teacher_logits / 2).log_softmax(-1),
                                    log_target=True, reduction="none").sum(-1).mean() * 4
    assert torch.allclose(blended, 0.5 * plain.loss + 0.5 * kl, atol=1e-5)
    blended.backward()
    assert all(p.grad is None for p in dense.parameters()), "no gradient flows into the teacher"
    distiller.detach()
    student.train()
    assert torch.allclose(student(**batch).loss, plain.loss, atol=1e-6), "detach() restores the plain task loss"


def test_unknown_settings_are_named():
    with pytest.raises(hfprune.RecipeError, match=r"unknown distill key\(s\) \['temp'\]"):
        hfprune.Distiller(build("bert"), {"temp": 2.0}, teacher=build("bert"))
