"""Towers end in unit vectors; shared heads see both modalities."""

import pytest
import torch

from embedder.towers import HuseModel, Tower, fuse


def test_tower_output_is_unit_norm_with_input_normalisation():
    torch.manual_seed(0)
    tower = Tower(6, (10, 10), 4, dropout=0.15)
    tower.eval()
    x = torch.randn(5, 6) * 100 + 50
    out = tower(x)
    assert out.shape == (5, 4)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    before = out.clone()
    tower.set_input_norm(torch.full((6,), 50.0), torch.full((6,), 0.01))
    assert not torch.allclose(tower(x), before)
    assert len([m for m in tower.mlp if isinstance(m, torch.nn.Linear)]) == 3
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        tower(torch.zeros(2, 5))


def test_huse_model_shares_one_head_per_name_across_modalities():
    torch.manual_seed(0)
    model = HuseModel(Tower(6, (8,), 4), Tower(3, (8,), 4), {"level1": 2, "attr:a.b": 3},
                      logit_scale=4.0)
    e_img, e_txt = model(torch.randn(2, 6), torch.randn(2, 3))
    li, lt = model.logits(e_img), model.logits(e_txt)
    assert list(li) == ["level1", "attr:a.b"] and li["attr:a.b"].shape == (2, 3)
    assert lt["level1"].shape == (2, 2) and len(model.heads) == 2  # one Linear per head name
    # the head sees logit_scale * embedding, whatever the modality
    head = model.heads[0]
    assert torch.allclose(lt["level1"], 4.0 * e_txt @ head.weight.T + head.bias, atol=1e-5)
    # both modalities train that one Linear: each one's loss alone reaches its weight
    for logits in (li, lt):
        model.zero_grad()
        logits["level1"].pow(2).sum().backward(retain_graph=True)
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    f = fuse(e_img, e_txt)
    assert torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="differ"):
        HuseModel(Tower(6, (8,), 4), Tower(3, (8,), 5), {"x": 2})
