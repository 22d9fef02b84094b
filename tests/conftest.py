import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network: the Hub client and transformers must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A factory of cached tiny checkpoints: tiny_dir("llama", dtype=torch.bfloat16)."""
    cache: dict[tuple, Path] = {}

    def make(model_type: str, **kwargs) -> Path:
        key = (model_type, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"src-{model_type}")
            cache[key] = build_tiny(folder, model_type, **kwargs)
        return cache[key]

    return make
