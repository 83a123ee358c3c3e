"""The one training loop's options beyond the authors' schedule: linear warm-up, gradient clipping, mixup."""

import pytest
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
    fit(
        model,
        train_batches=lambda epoch: zip(x, y),
        n_batches=8,
        validate=lambda m: {"loss": 0.0, "roc_auc": 0.5},
        loss_fn=nn.BCEWithLogitsLoss(),
        config=cfg,
        workdir=tmp_path / name,
        device=torch.device("cpu"),
    )
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
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ParameterError, match="mixup"):
            TrainConfig(mixup=bad)


def test_mixup_mixes_segments_and_labels_alike_and_keeps_unknowns_unknown():
    """Stage-1 mixup: every segment is w * itself + (1 - w) * another segment of its batch, and its labels the same
    mix of both clips' labels; the same epoch gives the same batches (resume); 0 leaves segments as they are."""
    import numpy as np
    from tagstack.train.stages import segment_batches

    rng = np.random.default_rng(0)
    n, size = 12, 5
    mels = rng.normal(size=(n, size, 3)).astype(np.float32)  # one segment per clip
    labels = np.zeros((n, n + 1), np.float32)
    labels[:, :n] = np.eye(n)  # clip i alone has tag i: a mix can be read off its labels
    labels[0, n] = np.nan  # clip 0 was never annotated for the last tag
    rows = np.arange(n)
    plain, nb = segment_batches(mels, labels, rows=rows, size=size, batch_size=6, seed=4)
    mixed, _ = segment_batches(mels, labels, rows=rows, size=size, batch_size=6, seed=4, mixup=0.4)
    assert [x.tolist() for x, _ in mixed(2)] == [x.tolist() for x, _ in mixed(2)]
    changed = 0
    for (x0, y0), (x, y) in zip(plain(2), mixed(2)):
        for i in range(len(x)):
            me = int(np.argmax(y0[i, :n].numpy()))  # the clip at this position, unmixed
            np.testing.assert_array_equal(x0[i].numpy(), mels[me])
            weights = y[i, :n].numpy()
            others = [j for j in range(n) if j != me and weights[j] > 0]
            if not others:  # mixed with itself, or a weight of 1
                np.testing.assert_allclose(x[i].numpy(), mels[me], rtol=1e-5, atol=1e-6)
                continue
            changed += 1
            (j,) = others
            w = weights[me]
            np.testing.assert_allclose(w + weights[j], 1.0, rtol=1e-5)
            np.testing.assert_allclose(x[i].numpy(), w * mels[me] + (1 - w) * mels[j], rtol=1e-4, atol=1e-5)
            assert np.isnan(y[i, n].item()) == (0 in (me, j))  # unknown in either clip: unknown in the mix
    assert changed >= nb * 6 // 2


def test_a_short_clip_gives_only_its_segments_of_audio():
    import numpy as np
    from tagstack.train.stages import segment_batches

    size, n_frames = 5, 20  # 4 segments a clip
    mels = np.zeros((3, n_frames, 2), np.float32)
    for i in range(3):
        mels[i, :, 0] = i
        mels[i, :, 1] = np.arange(n_frames)  # which frame each row is
    frames = np.array([20, 11, 3])  # whole clip; 2 segments of audio; less than one (its first segment is kept)
    batches, _ = segment_batches(mels, np.eye(3, dtype=np.float32), rows=np.arange(3), size=size, batch_size=4, seed=0, frames=frames)
    seen = sorted((int(x[0, 0]), int(x[0, 1])) for xb, _ in batches(0) for x in xb.numpy())
    assert seen == [(0, 0), (0, 5), (0, 10), (0, 15), (1, 0), (1, 5), (2, 0)]


def test_joint_batches_carry_each_clips_frames_of_audio_to_the_model():
    """Joint fine-tuning's batches: the clips and how much of each is audio, which TaggingModel(mels, frames) reads."""
    import numpy as np
    from tagstack.train.stages import clip_batches

    mels = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 4, 2), np.float32)
    frames = np.array([4, 3, 2, 4, 1, 4])
    rows = np.array([5, 1, 2, 4])
    batches, _ = clip_batches(mels, np.eye(4, dtype=np.float32), rows=rows, batch_size=2, seed=0, multiclass=False, frames=frames)
    seen = [(int(m[0, 0]), int(f)) for (x, f), _ in batches(0) for m, f in zip(x.numpy(), f.numpy())]
    assert sorted(seen) == [(1, 3), (2, 2), (4, 1), (5, 4)]


def test_mixup_is_for_the_local_cnns_only():
    import pytest
    from tagstack.config import global_schedule
    from tagstack.errors import ParameterError
    from tagstack.experiments.experiment_config import ExperimentConfig

    with pytest.raises(ParameterError, match="stage 1"):
        ExperimentConfig(global_=global_schedule(mixup=0.4))


def test_masked_bce_ignores_unknown_labels_and_equals_bce_without_them():
    from tagstack.train.stages import masked_bce

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=g, requires_grad=True)
    y = torch.rand(6, 4, generator=g)
    assert torch.allclose(masked_bce(logits, y), nn.BCEWithLogitsLoss()(logits, y))
    y_unknown = y.clone()
    y_unknown[:3, 2] = float("nan")
    known = ~torch.isnan(y_unknown)
    loss = masked_bce(logits, y_unknown)
    assert torch.allclose(loss, nn.BCEWithLogitsLoss()(logits[known], y[known]))
    loss.backward()
    assert torch.all(logits.grad[:3, 2] == 0) and torch.all(logits.grad[known] != 0)
    none_known = masked_bce(logits, torch.full_like(y, float("nan")))
    assert none_known.item() == 0 and none_known.requires_grad


@pytest.mark.slow
def test_global_stage_trains_on_labels_with_unknowns(tmp_path):
    """Stage 3 on features whose labels are partly unknown: finite losses and validation scores, a model that learned."""
    import numpy as np

    from tagstack.models.classifier import GlobalArch, GlobalMLP
    from tagstack.train.stages import train_global

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 12)).astype(np.float32)
    y = (x[:, :3] > 0).astype(np.float32)
    y[:120, 2] = np.nan  # half the clips never annotated for tag 2
    torch.manual_seed(0)
    head = GlobalMLP(GlobalArch(12, 3, hidden=16, dropout=0.0))
    state = train_global(
        head,
        x_train=x[:200],
        y_train=y[:200],
        x_valid=x[200:],
        y_valid=y[200:],
        config=TrainConfig(lr=0.05, max_epochs=15, batch_size=20),
        workdir=tmp_path / "g",
        device=torch.device("cpu"),
    )
    last = state.history[-1]
    assert np.isfinite(last["train_loss"]) and np.isfinite(last["val_loss"])
    assert last["val_roc_auc"] > 0.9


def test_share_weights_make_the_process_average_the_whole_batch_loss():
    """torchrun: shares of unequal size and unequal unknown labels, weighted, average to one process's batch loss."""
    from tagstack.train.loop import share_weight
    from tagstack.train.stages import masked_bce

    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(7, 5, generator=g), torch.rand(7, 5, generator=g)
    y[::2, 1:4] = float("nan")  # rows of another source, with 3 tags never annotated
    whole = masked_bce(logits, y)
    for world in (2, 3):
        parts = [masked_bce(logits[r::world], y[r::world]) * share_weight(y, rank=r, world=world) for r in range(world)]
        assert torch.allclose(sum(parts) / world, whole)
    classes = torch.tensor([0, 2, 1, 1, 0])  # class indices: shares weighted by their rows
    ce = nn.CrossEntropyLoss()
    scores = torch.randn(5, 3, generator=g)
    parts = [ce(scores[r::2], classes[r::2]) * share_weight(classes, rank=r, world=2) for r in range(2)]
    assert torch.allclose(sum(parts) / 2, ce(scores, classes))


def test_a_quick_epoch_logs_its_summary_line_only(tmp_path, caplog, monkeypatch):
    """Off a terminal an epoch's bar speaks only when the epoch is slow: the log of a quick one is its summary line."""
    import logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the suite runs quiet (conftest)
    caplog.set_level(logging.INFO, logger="tagstack")
    one_epoch_change(tmp_path, "logged")
    assert [r.getMessage() for r in caplog.records if r.name == "tagstack.progress"] == []
    assert any(r.getMessage().startswith("[train] epoch 1: train loss") for r in caplog.records)


def test_the_same_training_writes_byte_identical_checkpoints(tmp_path):
    """A checkpoint's bytes depend on its contents only (not on the temporary name it was written under)."""
    one_epoch_change(tmp_path, "a")
    one_epoch_change(tmp_path, "b")
    for name in ("last.pt", "best.pt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
