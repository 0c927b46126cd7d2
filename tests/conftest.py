import os

# Triton kernels run in interpreter mode on CPU; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from harness import registry  # noqa: E402

PLUGIN_DIR = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """Install the toy plug-in the way pip would: a dist-info with entry_points.txt on sys.path."""
    dist = tmp_path / "toy_mixer_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mixer-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mixer_harness.candidates]\ntoy = toy_mixer_plugin\n\n[mixer_harness.tasks]\ntoy = toy_mixer_plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    registry.reload_plugins()
    yield
    registry.unregister("toy-ema")
    registry.unregister("toy-last")
    sys.modules.pop("toy_mixer_plugin", None)
