"""MVQ-KD: alignment of teacher codebook indexes to student frames."""

import pytest
import torch

from mvq_kd.kd.codebook import IGNORE_INDEX, align_teacher_frames


def indexes(lens, n=2):
    t = max(lens)
    x = torch.full((len(lens), t, n), 255, dtype=torch.uint8)
    for i, m in enumerate(lens):
        x[i, :m] = torch.arange(m * n).view(m, n) % 200
    return x, torch.tensor(lens)


def test_ratio_one_is_identity_with_padding():
    x, lens = indexes([5, 3])
    out = align_teacher_frames(x, lens, torch.tensor([5, 3]), ratio=1)
    assert out.shape == (2, 5, 2) and out.dtype == torch.int64
    assert torch.equal(out[0], x[0].long())
    assert torch.equal(out[1, :3], x[1, :3].long()) and (out[1, 3:] == IGNORE_INDEX).all()


def test_ratio_two_concatenates_successive_frames():
    x, lens = indexes([8, 6])
    out = align_teacher_frames(x, lens, torch.tensor([4, 3]), ratio=2)
    assert out.shape == (2, 4, 4)
    assert torch.equal(out[0, 1], torch.cat([x[0, 2], x[0, 3]]).long())
    assert (out[1, 3] == IGNORE_INDEX).all()


@pytest.mark.parametrize("teacher,student", [(9, 4), (7, 4), (6, 5), (8, 2 + 4)])
def test_off_by_one_or_two_is_trimmed_or_ignored(teacher, student):
    x, lens = indexes([teacher])
    out = align_teacher_frames(x, lens, torch.tensor([student]), ratio=2)
    usable = min(teacher // 2, student)
    assert out.shape == (1, student, 4)
    assert (out[0, :usable] != IGNORE_INDEX).all() and (out[0, usable:] == IGNORE_INDEX).all()


def test_large_mismatch_names_the_cut():
    x, lens = indexes([20, 8])
    with pytest.raises(ValueError, match="Cut b: 8 teacher frames do not match 9 student"):
        align_teacher_frames(x, lens, torch.tensor([10, 9]), ratio=2, cut_ids=["a", "b"])


@pytest.mark.parametrize("joint", [False, True])
def test_codebook_loss_ignores_padding_and_trains_every_parameter(joint):
    from mvq_kd.kd.codebook import CodebookLoss

    torch.manual_seed(0)
    loss_fn = CodebookLoss(input_dim=8, num_codebooks=4, joint=joint)
    h = torch.randn(2, 5, 8, requires_grad=True)
    targets = torch.randint(0, 256, (2, 5, 4))
    targets[1, 3:] = IGNORE_INDEX
    loss = loss_fn(h, targets)
    # Padding: other values at ignored frames change nothing.
    h2 = h.detach().clone()
    h2[1, 3:] = 100.0
    assert torch.allclose(loss_fn(h2, targets), loss)
    loss.backward()
    assert all(p.grad is not None for p in loss_fn.parameters())
    assert h.grad[1, 3:].abs().sum() == 0
    # Independent form (and the joint one at initialisation) is the plain cross-entropy.
    logits = loss_fn.proj(loss_fn.norm(h.detach())).view(2, 5, 4, 256)
    valid = targets != IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(logits[valid], targets[valid], reduction="sum")
    assert torch.allclose(loss.detach(), ref, atol=1e-4)
    with pytest.raises(ValueError, match="expected 4 codebooks"):
        loss_fn(h, targets[..., :2])
