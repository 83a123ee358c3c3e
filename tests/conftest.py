import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import tagstack` does; test modules may import torch first

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

try:  # generated inputs are the same on every run (a failure reproduces); HYPOTHESIS_PROFILE=explore draws new ones
    from hypothesis import settings

    settings.register_profile("repeatable", derandomize=True)
    settings.register_profile("explore", max_examples=500)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
except ImportError:
    pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from synth import make_dataset

    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, n_clips=64)
    return root


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A randomly initialised tagger (three scales, the synth tags) saved as a model file; modules may define their own."""
    from tagstack.models.file import save_model
    from test_equivalence import random_tagger

    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(random_tagger(), path)
    return path


#: Fixtures that train networks: every test that uses one is marked ``slow`` (``pytest -m "not slow"`` skips them).
TRAINING_FIXTURES = {"run", "trained_model"}


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs, filled to the last byte after the test writes its earlier outputs: ``(folder, fill)``."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode != 0
    ):
        pytest.skip("needs root and a tmpfs mount")

    def fill() -> None:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_train_nothing(request, monkeypatch):
    """The fast half trains no network (CONTRIBUTING): a test not marked ``slow`` that reaches the trainer fails."""
    if request.node.get_closest_marker("slow") is None:
        import tagstack.train.stages as stages

        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} trains a network but is not marked slow")

        monkeypatch.setattr(stages, "fit", refuse)
