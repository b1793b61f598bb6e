"""Layer-wise KD: losses, auxiliary branches, APC mask, layer maps."""

import pytest
import torch

from mvq_kd.kd.layerwise import (
    MIN_COSINE_LOSS,
    AuxiliaryBranch,
    LayerwiseKd,
    LayerwiseKdConfig,
    TeacherLayers,
    cosine_loss,
    default_layer_map,
    relation_kl,
    relation_loss,
)
from mvq_kd.model.encoder import valid_mask


def test_default_layer_map():
    assert default_layer_map(16, 16, 4) == [(4, 4), (8, 8), (12, 12), (16, 16)]
    assert default_layer_map(4, 8, 2) == [(2, 4), (4, 8)]
    assert default_layer_map(2, 4, 4) == [(1, 2), (2, 4)]  # capped at the student's depth
    cfg = LayerwiseKdConfig(student_layers=(1, 3), teacher_layers=(2, 4), feature_loss_scale=1)
    assert cfg.layer_map(4, 4) == [(1, 2), (3, 4)]
    with pytest.raises(ValueError, match="teacher layer 5"):
        LayerwiseKdConfig(student_layers=(1,), teacher_layers=(5,)).layer_map(4, 4)
    with pytest.raises(ValueError, match="pair up"):
        LayerwiseKdConfig(student_layers=(1, 2), teacher_layers=(2,))
    with pytest.raises(ValueError, match="feature or the APC"):
        LayerwiseKdConfig(attention_loss_scale=1.0)


def test_cosine_loss_minimal_for_identical_and_ignores_padding():
    torch.manual_seed(0)
    y = torch.randn(2, 6, 8)
    mask = valid_mask(torch.tensor([6, 4]), 6)
    same = cosine_loss(y, y, mask)
    assert same.item() == pytest.approx(10 * MIN_COSINE_LOSS, rel=1e-5)
    other = cosine_loss(y, torch.randn(2, 6, 8), mask)
    assert other.item() > same.item() + 1.0
    # Padding frames (utterance 1 after frame 4) do not count.
    changed = y.clone()
    changed[1, 4:] = torch.randn(2, 8)
    assert cosine_loss(y, changed, mask).item() == pytest.approx(same.item(), rel=1e-6)


def test_relation_kl_zero_for_identical_with_differing_head_counts():
    torch.manual_seed(0)
    b, t, d = 2, 7, 16
    lens = torch.tensor([7, 5])
    x = torch.randn(b, t, d)
    teacher = x.view(b, t, 2, 8).transpose(1, 2)  # 2 heads of 8
    student = x.view(b, t, 4, 4).transpose(1, 2)  # the same vectors as 4 heads of 4
    assert relation_kl(teacher, student, lens, num_heads=2).item() == pytest.approx(0, abs=1e-5)
    other = torch.randn(b, 4, t, 4)
    assert relation_kl(teacher, other, lens, num_heads=2).item() > 0.1
    # Padding frames (keys and queries) do not count.
    padded = student.clone()
    padded[1, :, 5:] = torch.randn(4, 2, 4)
    assert relation_kl(teacher, padded, lens, num_heads=2).item() == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="equal widths"):
        relation_kl(teacher, torch.randn(b, 4, t, 3), lens, num_heads=2)


def test_relation_maps_are_recomputed_not_kept():
    """The attention loss keeps no (B, H, T, T) map for the backward pass, and its
    value and gradient are those of the plain computation."""
    torch.manual_seed(0)
    b, h, t, d = 2, 4, 50, 32
    lens = torch.tensor([50, 41])
    teacher = torch.randn(b, h, t, d // h)
    student = torch.randn(b, 2, t, d // 2, requires_grad=True)
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = relation_loss(teacher, student, lens, h)
    assert max(saved) < b * h * t * t  # only the inputs are kept
    (grad,) = torch.autograd.grad(loss, student)
    ref = relation_kl(teacher, student, lens, h)
    (ref_grad,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shift", [1, 3])
def test_apc_mask_never_lets_frame_t_see_its_target(shift):
    torch.manual_seed(0)
    branch = AuxiliaryBranch(6, 8, num_heads=2, ffn_dim=16, dropout=0.0).eval()
    t = 10
    h = torch.randn(1, t, 6, requires_grad=True)
    out = branch(h, torch.tensor([t]), lookahead=shift)
    for step in range(t):
        (grad,) = torch.autograd.grad(out.future[0, step].sum(), h, retain_graph=True)
        seen = grad[0].abs().sum(-1) > 0
        # Frame step + shift (the APC target) and later ones are never read ...
        assert not seen[step + shift :].any(), (step, seen)
        # ... and everything before it is (full context up to the target).
        assert seen[: min(step + shift, t)].all()
    # Without APC the branch is non-streaming: frame 0 sees the last frame.
    full = branch(h, torch.tensor([t]), lookahead=None)
    (grad,) = torch.autograd.grad(full.features[0, 0].sum(), h)
    assert grad[0, -1].abs().sum() > 0


def _teacher_like(student_layers, lens, dim=8, heads=2):
    """Random teacher layers 1 and 2 (outputs and q, k, v) for the student layers' frames."""
    b, t = len(lens), student_layers[0].size(1)
    outputs = {m: torch.randn(b, t, dim) for m in (1, 2)}
    qkv = {m: tuple(torch.randn(b, heads, t, dim // heads) for _ in range(3)) for m in (1, 2)}
    return TeacherLayers(outputs=outputs, qkv=qkv, lens=lens)


def test_layerwise_losses_every_parameter_gets_gradient():
    torch.manual_seed(0)
    cfg = LayerwiseKdConfig(
        num_connections=2, feature_loss_scale=1.0, attention_loss_scale=1.0, apc_loss_scale=1.0
    )
    kd = LayerwiseKd(
        cfg, student_dim=6, student_depth=2, teacher_dim=8, teacher_depth=2, teacher_heads=2
    )
    assert kd.pairs == [(1, 1), (2, 2)]
    lens = torch.tensor([9, 6])
    layers = [torch.randn(2, 9, 6, requires_grad=True) for _ in range(2)]
    losses = kd(layers, lens, _teacher_like(layers, lens))
    assert set(losses) == {"feature_loss", "attention_loss", "apc_loss"}
    sum(kd.scales[k] * v for k, v in losses.items()).backward()
    for name, p in kd.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Without APC the branches have no LSTM (no parameter left without gradient).
    no_apc = LayerwiseKd(
        LayerwiseKdConfig(num_connections=2, feature_loss_scale=1.0),
        6,
        2,
        8,
        2,
        2,
    )
    assert all(b.lstm is None for b in no_apc.branches)


def test_layerwise_rejects_other_frame_rates():
    kd = LayerwiseKd(LayerwiseKdConfig(num_connections=1, feature_loss_scale=1.0), 6, 1, 8, 1, 2)
    layers = [torch.randn(1, 20, 6)]
    teacher = TeacherLayers({1: torch.randn(1, 10, 8)}, {}, torch.tensor([10]))
    with pytest.raises(ValueError, match="frame rate"):
        kd(layers, torch.tensor([20]), teacher)
