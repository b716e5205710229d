import logging
import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run where one is available)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    logging.getLogger("peft_core").setLevel(logging.INFO)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Tiny model folders with real tokenizers (see tiny_runs.py), built once per session."""
    from tiny_runs import build_model_dirs

    return build_model_dirs(tmp_path_factory.mktemp("tiny-models"))
