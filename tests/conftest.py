"""Fixtures every test shares: the tokenizer cache, the real data files, tiny GPT-2 checkpoints.

Everything runs offline on a CPU: the GPT-2 tokenizer comes from ../shared/tiktoken, the datasets from
../shared/data, and the GPT-2 checkpoints are tiny random models written here in the Hugging Face format,
then loaded through the same code path as the real weights.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
if (SHARED / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data():
    """The real dataset splits in ../shared/data (gsm8k/, prosqa/, prontoqa/)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not here")
    return path


def _tiny_gpt2(path, safe_serialization):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    # A random init is close to uniform: widen it so that greedy decoding is not a tie-break lottery.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(path, safe_serialization=safe_serialization)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 (2 layers, 32 dims, the real 50257 vocab) saved as config.json + model.safetensors."""
    return _tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), safe_serialization=True)


@pytest.fixture(scope="session")
def tiny_gpt2_bin_dir(tmp_path_factory):
    """The same tiny GPT-2 saved as config.json + pytorch_model.bin."""
    return _tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-bin"), safe_serialization=False)
