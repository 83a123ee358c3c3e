"""The one training loop's options beyond the authors' schedule: linear warm-up and gradient clipping."""
import torch
from torch import nn

from tagstack.config import TrainConfig
from tagstack.train.loop import fit


def one_epoch_change(tmp_path, name: str, **options) -> float:
    """How far one epoch of 8 batches moves a linear model's weights from the same start."""
    torch.manual_seed(0)
    model = nn.Linear(16, 3)
    start = model.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 32, 16, generator=g), (torch.rand(8, 32, 3, generator=g) > 0.5).float()
    cfg = TrainConfig(lr=0.05, max_epochs=1, **options)
    fit(model, train_batches=lambda epoch: zip(x, y), n_batches=8, validate=lambda m: {"loss": 0.0, "roc_auc": 0.5},
        loss_fn=nn.BCEWithLogitsLoss(), config=cfg, workdir=tmp_path / name, device=torch.device("cpu"))
    return float((model.weight.detach() - start).norm())


def test_warm_up_ramps_the_rate_and_clipping_bounds_each_step(tmp_path):
    plain = one_epoch_change(tmp_path, "plain")
    warm = one_epoch_change(tmp_path, "warm", warmup_epochs=1)  # rates 1/8 ... 8/8 of 0.05: about half the distance
    clipped = one_epoch_change(tmp_path, "clip", clip_norm=1e-3)  # 8 steps of at most 0.05 * 1e-3, with momentum 0.9 at most 10x that
    assert 0.3 * plain < warm < 0.8 * plain
    assert clipped <= 8 * 10 * 0.05 * 1e-3 < plain


def test_warm_up_and_clipping_are_validated():
    import pytest
    from tagstack.errors import ParameterError

    with pytest.raises(ParameterError, match="warmup_epochs"):
        TrainConfig(warmup_epochs=-1)
    with pytest.raises(ParameterError, match="clip_norm"):
        TrainConfig(clip_norm=-0.5)
    with pytest.raises(ParameterError, match="momentum"):
        TrainConfig(momentum=0.0)
