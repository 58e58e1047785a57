import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_common import run  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def recipe(tmp_path_factory):
    """The tiny recipe, stages 1-6, once per session: (its dir, its output, seconds it took)."""
    tmp = tmp_path_factory.mktemp("recipe")
    t0 = time.time()
    out = run([], tmp)
    return tmp, out, time.time() - t0
