"""The CUDA code paths give the CPU's numbers. These run only where a CUDA GPU is present.

CI has no GPU, so these skip there; run them on a GPU machine with
``pytest tests/test_cuda.py``. PyTorch computes cuDNN convolutions in TF32 by
default (10-bit mantissas; TensorFlow does the same): what these compare is
tagstack's code on both devices, so they run in float32. Rounding both
operands of every convolution to TF32 on the CPU moved the pretrained-xl
embedding of real recordings by up to 0.07 (musicnn's mid end, 3,927 products
per output) and its tags by up to 1.1e-3 (docs/performance.md).
"""

import numpy as np
import pytest
import torch

from synth import TEST_FRONTEND
from tagstack.audio.frontend import ClipMel, LogMel
from tagstack.errors import TagstackError
from tagstack.inference.tagger import Tagger
from tagstack.models.backbones.won import WON_FRONTEND
from tagstack.models.local import LocalCNN, local_arch
from tagstack.models.zoo import resolve_model
from tagstack.runtime import choose_device

DEFAULT_MODEL = resolve_model(None)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(autouse=True)
def _float32_convolutions():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def test_auto_device_is_the_gpu():
    assert choose_device("auto").type == "cuda"


def test_gpu_front_end_matches_the_cpu_one():
    y = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 641655)).astype(np.float32) * 0.1)
    cpu = LogMel()(y)
    gpu = LogMel().cuda()(y.cuda()).cpu()
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-4, atol=1e-5)
    assert ClipMel().cuda()(y.cuda()).shape == (3, 1250, 128)
    # Won et al.'s: reflected edges (the GPU pads the batch at once, the CPU row by row), decibels
    cpu, gpu = LogMel(WON_FRONTEND)(y[:, :48000]), LogMel(WON_FRONTEND).cuda()(y[:, :48000].cuda()).cpu()
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), atol=1e-3)


def test_gpu_local_cnn_matches_the_cpu_one():
    torch.manual_seed(0)
    model = LocalCNN(local_arch(27, n_tags=10)).eval()
    x = torch.randn(4, 27, 128)
    with torch.inference_mode():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="no shipped model in this checkout")
def test_tagging_on_the_gpu_gives_the_cpu_probabilities():
    rng = np.random.default_rng(1)
    y = (0.1 * rng.standard_normal(22050 * 70)).astype(np.float32)  # three windows, the last one partial
    cpu = Tagger(device="cpu").predict(y, sr=22050, taggram=True)
    gpu = Tagger(device="cuda").predict(y, sr=22050, taggram=True)
    np.testing.assert_allclose(gpu.probs, cpu.probs, atol=2e-3)
    np.testing.assert_allclose(gpu.taggram, cpu.taggram, atol=2e-3)


@pytest.mark.skipif(not resolve_model("pretrained-xl").exists(), reason="no shipped model in this checkout")
def test_pretrained_networks_batched_across_files_on_the_gpu_give_the_cpus_numbers():
    """The most accurate model (two musicnn ports, Won et al.'s FCN and CRNN, two front ends) with the windows of
    several files in one pass on the GPU, where the musicnn port computes whole maps and skips the filters that
    cannot fire: each file's tags and embedding as the CPU gives them reading it alone."""
    rng = np.random.default_rng(2)
    sources = [(0.1 * rng.standard_normal(int(22050 * s))).astype(np.float32) for s in (10, 30, 45)]
    cpu = Tagger("pretrained-xl", device="cpu")
    on_gpu = Tagger("pretrained-xl", device="cuda")
    gpu = on_gpu.predict_batch(sources, sr=22050)
    for y, g in zip(sources, gpu):
        c = cpu.predict(y, sr=22050)
        np.testing.assert_allclose(g.probs, c.probs, atol=2e-3)
        np.testing.assert_allclose(g.embedding, c.embedding, rtol=1e-3, atol=2e-3)
        alone = on_gpu.predict(y, sr=22050)  # batching alone, on one device: rounding only
        np.testing.assert_allclose(g.embedding, alone.embedding, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not resolve_model("pretrained-xl").exists(), reason="no shipped model in this checkout")
def test_many_files_on_the_gpu_share_passes_and_give_the_cpus_numbers(tmp_path):
    """`tagstack tag` on a GPU (predict_many, batched there by default): worker threads decode, one thread runs the
    windows of consecutive files 64 at a time; each file's tags and taggram as the CPU gives them, a bad file skipped."""
    import soundfile as sf

    rng = np.random.default_rng(3)
    files = []
    for k, seconds in enumerate((4, 31, 95)):
        files.append(tmp_path / f"f{k}.wav")
        sf.write(files[-1], (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
    (tmp_path / "bad.wav").write_text("not audio")
    files.insert(1, tmp_path / "bad.wav")
    cpu = Tagger("pretrained-xl", device="cpu")
    got = list(Tagger("pretrained-xl", device="cuda").predict_many(files, taggram=True))
    assert isinstance(got[1], TagstackError)
    for path, g in zip(files, got):
        if path.name == "bad.wav":
            continue
        c = cpu.predict(path, taggram=True)
        np.testing.assert_allclose(g.probs, c.probs, atol=2e-3)
        np.testing.assert_allclose(g.taggram, c.taggram, atol=2e-3)
        np.testing.assert_allclose(g.embedding, c.embedding, rtol=1e-3, atol=2e-3)


def test_training_runs_on_the_gpu(tmp_path, synth_dir):
    from tagstack.config import TrainConfig
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.experiments.run import run_experiment as run_all

    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=(18, 27),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=3, batch_size=32, lr_stages=1, patience=2),
        global_=TrainConfig(max_epochs=10, batch_size=8, monitor="roc_auc", patience=3),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        device="cuda",
    )
    metrics = run_all(cfg, tmp_path / "run")
    assert metrics["global"]["roc_auc"] > 0.7
    tagger = Tagger(tmp_path / "run" / "model.safetensors", device="cuda")
    assert len(tagger.tags) == 4
