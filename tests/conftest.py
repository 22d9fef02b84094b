import os
from pathlib import Path

import pytest

# Tests never touch the network: the Hub client and transformers must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# After the environment above: these import huggingface_hub and transformers, which read it at import.
from support.hub_server import HubServer, point_client_at  # noqa: E402
from support.tiny_models import build_tiny  # noqa: E402
from support.tiny_tasks import write_tasks  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A factory of cached tiny checkpoints: tiny_dir("llama", dtype=torch.bfloat16)."""
    cache: dict[tuple, Path] = {}

    def make(model_type: str, **kwargs) -> Path:
        key = (model_type, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in cache:
            # named by what it is, not by when it was made: tests name members after the folder (src-llama0-er1.5)
            variant = "".join(f"-{k}-{v}".replace("torch.", "") for k, v in key[1])
            folder = tmp_path_factory.mktemp(f"src-{model_type}{variant}")
            cache[key] = build_tiny(folder, model_type, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A folder of tiny local lm-eval tasks, one of each request type (support/tiny_tasks.py), per test module."""
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running loopback Hub for user "tester" (member of org "acme"), with the Hub client pointed at it: online,
    without Xet, with a private cache and no token. On teardown, no endpoint may have raised (answered 500)."""
    with HubServer(username="tester", orgs=("acme",)) as server:
        point_client_at(server, monkeypatch, tmp_path / "hf-home")
        yield server
    assert not server.errors, server.errors[0]
