import numpy as np
import pytest
import torch

from tagstack.models.aggregation import aggregate, feature_layout, select_columns
from tagstack.errors import ParameterError
from tagstack.models.classifier import GlobalArch, GlobalMLP
from tagstack.models.local import build_local_cnn, n_segments
from tagstack.models.local_blocks import ARCHITECTURES

# (frames, channels) of every conv layer's output, from Sec. II-A
EXPECTED = {
    18: [(18, 128), (6, 128), (2, 256)],
    27: [(27, 128), (9, 128), (3, 256)],
    54: [(54, 128), (18, 128), (6, 256), (2, 256)],
    108: [(108, 128), (36, 128), (12, 256), (4, 256), (2, 256)],
    216: [(216, 128), (72, 128), (24, 256), (8, 256), (4, 256), (2, 256)],
}


@pytest.mark.parametrize("frames", sorted(ARCHITECTURES))
def test_every_architecture_layer_shapes_output_and_gradients(frames):
    torch.manual_seed(0)
    model = build_local_cnn(frames, n_tags=7)
    x = torch.randn(4, frames, 128)
    acts, logits = model.forward_intermediates(x)
    assert [(a.shape[2], a.shape[1]) for a in acts] == EXPECTED[frames]
    assert all(a.shape[0] == 4 for a in acts)
    assert [(i["frames"], i["channels"]) for i in model.feature_info] == EXPECTED[frames]
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    assert all(bool((a >= 0).all()) for a in acts)  # after ReLU
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_even_kernels_pad_on_the_right_like_keras():
    model = build_local_cnn(18, n_tags=2)
    pad = model.blocks[2][0]
    assert pad.padding == (0, 1)
    assert model.blocks[0][0].padding == (1, 1)


def test_segments_per_clip_match_the_paper():
    assert [n_segments(1250, s) for s in (18, 27, 54, 108, 216)] == [69, 46, 23, 11, 5]


def test_aggregated_feature_is_4096_dimensional():
    models = {s: build_local_cnn(s, n_tags=5).eval() for s in ARCHITECTURES}
    layout = feature_layout(models)
    assert layout[-1].stop == 4096
    sizes = {s: sum(b.stop - b.start for b in layout if b.scale == str(s)) for s in ARCHITECTURES}
    assert sizes == {18: 512, 27: 512, 54: 768, 108: 1024, 216: 1280}
    mels = torch.randn(2, 1250, 128)
    feats = torch.cat([aggregate(models[s], mels)[0] for s in sorted(models)], dim=1)
    assert feats.shape == (2, 4096)
    assert len(select_columns(layout, scales=[18, 27, 54])) == 512 + 512 + 768
    assert len(select_columns(layout, scales=[27], layers=[1, 3])) == 128 + 256
    with pytest.raises(ParameterError, match="scales"):
        select_columns(layout, scales=[99])


def test_aggregation_is_max_within_segment_then_mean_over_segments():
    torch.manual_seed(1)
    model = build_local_cnn(27, n_tags=3).eval()
    mels = torch.randn(1, 100, 128)  # 3 segments of 27 frames, 19 frames dropped
    with torch.no_grad():
        feats, probs = aggregate(model, mels)
    # by hand: run each segment alone, max over time, mean over segments
    segs = [mels[:, i * 27 : (i + 1) * 27] for i in range(3)]
    with torch.no_grad():
        per_seg = [model.forward_intermediates(s) for s in segs]
    expected = [np.mean([acts[layer][0].amax(dim=1).numpy() for acts, _ in per_seg], axis=0) for layer in range(3)]
    np.testing.assert_allclose(feats[0].numpy(), np.concatenate(expected), rtol=1e-5, atol=1e-6)
    seg_probs = np.mean([torch.sigmoid(lg)[0].numpy() for _, lg in per_seg], axis=0)
    np.testing.assert_allclose(probs[0].numpy(), seg_probs, rtol=1e-5)


def test_a_padded_clip_is_aggregated_over_its_audio_only():
    """With ``frames`` (audio frames of a zero-padded clip), the mean runs over the whole segments of audio, and at
    least the first: the same numbers as the clip cut to those segments."""
    torch.manual_seed(2)
    model = build_local_cnn(27, n_tags=3).eval()
    mels = torch.randn(3, 135, 128)  # 5 segments of 27 frames
    frames = torch.tensor([135, 60, 10])  # all audio; 2 whole segments of audio; less than one segment
    with torch.no_grad():
        feats, probs = aggregate(model, mels, frames=frames)
        for i, k in enumerate((5, 2, 1)):
            f, p = aggregate(model, mels[i : i + 1, : k * 27])
            np.testing.assert_allclose(feats[i].numpy(), f[0].numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(probs[i].numpy(), p[0].numpy(), rtol=1e-5, atol=1e-6)


def test_local_model_rejects_wrong_input_shape():
    model = build_local_cnn(27, n_tags=3)
    with pytest.raises(ParameterError, match="27, 128"):
        model(torch.randn(2, 26, 128))


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_global_mlp(task):
    m = GlobalMLP(GlobalArch(n_features=4096, n_outputs=10, hidden=512, task=task)).eval()
    linear = [l for l in m.net if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linear] == [(4096, 512), (512, 512), (512, 10)]
    p = m.predict_proba(torch.randn(3, 4096))
    assert p.shape == (3, 10) and bool(((p >= 0) & (p <= 1)).all())
    if task == "multiclass":
        torch.testing.assert_close(p.sum(1), torch.ones(3))


def test_a_selection_records_only_the_scales_and_layers_that_give_columns():
    from test_equivalence import random_tagger

    m = random_tagger(scales=(18, 27, 54))
    assert m.selection(layers=[4]) == (["54"], [4])  # only the 54-frame CNN has a fourth layer
    assert m.selection(scales=[18, 54], layers=[4]) == (["54"], [4])
    assert m.selection(scales=[27], layers=[1, 3]) == (["27"], [1, 3])
    assert m.selection() == (["18", "27", "54"], [1, 2, 3, 4])
    n4 = sum(b.stop - b.start for b in m.layout if b.layer == 4)
    assert len(m.columns_of(layers=[4])) == n4
