"""Patch threat models: geometry, the budget check that only the patch changed, and the ``patch`` attack."""
import pytest
import torch
from torch import nn

from robustkit.attacks import build_attack
from robustkit.errors import BudgetViolationError, ConfigError
from robustkit.patch import mask_corners, patch_side, patch_threat, positions, square_masks
from robustkit.threat import ThreatModel, check_budget, project


def test_patch_side_and_too_large_patches():
    assert patch_side(0.25, 32, 32) == 16
    assert patch_side(1.0, 28, 28) == 28
    with pytest.raises(ConfigError, match=r"needs a 28-pixel square, larger than the image's 20-pixel side"):
        patch_side(0.7, 20, 56)  # sqrt(0.7 * 1120) = 28 > 20
    with pytest.raises(ConfigError, match=r"area: expected the patch's fraction"):
        patch_side(1.5, 32, 32)
    with pytest.raises(ConfigError, match=r"smaller than one pixel"):
        patch_side(1e-4, 32, 32)
    with pytest.raises(ConfigError, match=r"does not fit"):
        positions(2, 32, 32, 16, "fixed", [20, 0])


def test_masks_are_squares_at_their_corners():
    rows, cols = positions(50, 32, 32, 7, "random", generator=torch.Generator().manual_seed(0))
    masks = square_masks(32, 32, 7, rows, cols)
    assert masks.shape == (50, 1, 32, 32) and (masks.flatten(1).sum(1) == 49).all()
    r, c = mask_corners(masks)
    assert torch.equal(r, rows) and torch.equal(c, cols)
    assert len(set(rows.tolist())) > 5  # random places really vary
    fixed = patch_threat(torch.zeros(3, 3, 32, 32), 0.25, "fixed")
    assert fixed.mask[:, 0, 8:24, 8:24].all() and fixed.mask.sum() == 3 * 256  # centre by default


def test_budget_check_rejects_any_change_outside_the_patch():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    threat = patch_threat(x, 0.1, "random", generator=torch.Generator().manual_seed(1))
    inside = torch.where(threat.mask.expand_as(x), torch.rand_like(x), x)
    check_budget(x, inside, 1.0, "Linf", mask=threat.mask, patch_side=threat.patch_side)
    stray = inside.clone()
    outside = (~threat.mask[2, 0]).nonzero()[0]
    stray[2, 1, outside[0], outside[1]] += 1e-7 if x[2, 1, outside[0], outside[1]] < 0.5 else -1e-7
    with pytest.raises(BudgetViolationError, match=r"changed pixels outside its patch on 1 sample\(s\): e.g. sample 2, 1"):
        check_budget(x, stray, 1.0, "Linf", mask=threat.mask)
    # projection puts stray values back, bit for bit
    assert torch.equal(project(x, stray, 1.0, "Linf", mask=threat.mask), inside)
    # searched patches: only the side is known; two changes 9 columns apart do not fit in a 4-pixel square
    spread = x.clone()
    spread[0, 0, 3, 2] = 1 - spread[0, 0, 3, 2]
    spread[0, 0, 3, 10] = 1 - spread[0, 0, 3, 10]
    with pytest.raises(BudgetViolationError, match=r"spanning 9 columns on sample 0, more than its 4-pixel patch"):
        check_budget(x, spread, 1.0, "Linf", patch_side=4)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 5)
        torch.manual_seed(0)
        nn.init.normal_(self.fc.weight, std=0.05)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_other_attacks_refuse_patch_threat_models():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"attack 'pgd' does not support patch threat models"):
        build_attack("pgd")(_Linear(), x, torch.tensor([0, 1]), patch_threat(x, 0.1, "fixed"))
    with pytest.raises(ConfigError, match=r"needs a patch threat model"):
        build_attack("patch")(_Linear(), x, torch.tensor([0, 1]), ThreatModel("Linf", 1.0))


@pytest.mark.parametrize("location", ["fixed", "random", "searched"])
def test_patch_attack_changes_only_its_patch_and_fools_a_linear_model(location):
    model = _Linear().eval()
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    threat = patch_threat(x, 0.15, location, generator=torch.Generator().manual_seed(3))
    result = build_attack({"name": "patch", "steps": 30, "step_size": 0.1})(model, x, y, threat,
                                                                            generator=torch.Generator().manual_seed(4))
    changed = (result.x_adv != x).any(dim=1)
    if threat.mask is not None:
        assert not (changed & ~threat.mask[:, 0]).any()
    side = threat.patch_side
    rows, cols = changed.any(2), changed.any(1)
    for i in range(16):
        for axis in (rows[i], cols[i]):
            idx = axis.nonzero().squeeze(1)
            assert idx.numel() == 0 or int(idx.max() - idx.min()) + 1 <= side
    assert result.success.float().mean() >= 0.75  # a 6x6 patch moves a linear model's logits a lot
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)


def test_universal_patch_is_one_patch_pasted_everywhere():
    model = _Linear().eval()
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    attack = build_attack({"name": "patch", "universal": True, "epochs": 10, "batch_size": 10, "step_size": 0.1})
    train = patch_threat(x[:20], 0.15, "fixed")
    with pytest.raises(Exception, match=r"call fit\(\) on a training split first"):
        attack(model, x[20:], y[20:], patch_threat(x[20:], 0.15, "fixed"))
    info = attack.fit(model, x[:20], y[:20], train, generator=torch.Generator().manual_seed(0))
    assert info["train_examples"] == 20 and info["side"] == 6
    held = patch_threat(x[20:], 0.15, "fixed")
    result = attack(model, x[20:], y[20:], held)
    square = result.x_adv[:, :, 5:11, 5:11]
    assert torch.equal(square, square[:1].expand_as(square))  # the same patch on every image
    assert torch.equal(result.x_adv[:, :, :5], x[20:, :, :5])
    assert result.success.float().mean() > 0.5
