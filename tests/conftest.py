"""Fixtures every test shares: the real records in tests/data, tiny GPT-2 checkpoints.

Everything runs offline on a CPU from the project alone: real records come from the small subsets in
tests/data (see its README), the GPT-2 checkpoints are tiny random models written here in the Hugging Face
format and loaded through the same code path as the real weights, and the GPT-2 tokenizer comes from
tiktoken's cache ($TIKTOKEN_CACHE_DIR, or its download once).

With COCONUT_NO_SKIPS=1 (as .ci/run sets it), a test skipped for any reason but a missing GPU fails the run.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
torch.set_num_threads(min(2, torch.get_num_threads()))

NEEDS_GPU = "needs a CUDA GPU"
_unexpected_skips = []


@pytest.fixture(scope="session")
def fixtures():
    """tests/data: one folder per dataset (gsm8k/, prosqa/, prontoqa/), files named as in the originals."""
    return ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def gpt(tiny_gpt2_dir):
    """The tiny GPT-2 as this project loads it, without dropout."""
    from coconut import load_gpt
    return load_gpt(str(tiny_gpt2_dir), dropout=0.0).eval()


@pytest.fixture(scope="module")
def prosqa(fixtures):
    """The ProsQA records of tests/data."""
    import data
    return data.load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")


# eval.py's and analysis.py's flags for a few ProsQA records of tests/data, quickly, on the CPU.
FAST = ["--split", "valid", "--max_examples", "3", "--max_new_tokens", "16", "--device", "cpu", "--dtype", "float32"]


def prosqa_args(tiny_gpt2_dir, fixtures):
    return ["--init_from", str(tiny_gpt2_dir), "--dataset", "prosqa", "--data_dir", str(fixtures / "prosqa"), *FAST]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, fixtures):
    """ProsQA-format splits for training runs: 12 training records, 4 for validation and test."""
    path = tmp_path_factory.mktemp("prosqa")
    records = json.loads((fixtures / "prosqa" / "prosqa_valid.json").read_text())
    for split, part in (("train", records[:12]), ("valid", records[12:16]), ("test", records[16:20])):
        (path / f"prosqa_{split}.json").write_text(json.dumps(part))
    return path


def pytest_runtest_logreport(report):
    if report.skipped and NEEDS_GPU not in str(report.longrepr):
        _unexpected_skips.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("COCONUT_NO_SKIPS") == "1" and _unexpected_skips:
        print("\nskipped for a reason other than a missing GPU:\n  " + "\n  ".join(_unexpected_skips))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


def gpt_with_latent_tokens(path):
    """A tiny GPT-2 with the three latent tokens appended (copies of "<<"), nudged apart so that confusing them
    would show."""
    import data
    from gpt import GPT

    gpt = GPT.from_pretrained(path, dropout=0.0)
    gpt.grow_vocab(data.VOCAB_SIZE, init_row=data.encode("<<")[0])
    torch.manual_seed(0)
    with torch.no_grad():
        gpt.transformer.wte.weight[data.EOS + 1:] += 0.05 * torch.randn(3, gpt.config.n_embd)
    return gpt


def assert_compiled_equals_eager(compiled, model, batches, loss_rtol, grad_rtol):
    """The compiled training loss against eager, batch by batch: the losses and every parameter's gradient."""
    params = list(model.gpt.parameters())
    for batch in batches:
        model.gpt.zero_grad()
        losses = compiled(batch)
        losses.mean().backward()
        grads = [p.grad.clone() for p in params]
        model.gpt.zero_grad()
        eager = model(batch)
        eager.mean().backward()
        assert ((losses - eager).abs() / eager).max() <= loss_rtol
        assert all((p.grad - g).norm() <= grad_rtol * p.grad.norm() for p, g in zip(params, grads))
