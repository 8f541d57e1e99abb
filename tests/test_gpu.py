"""The GPU paths: SDPA's CUDA kernels, CUDA graphs in the compiled decode step, bf16 autocast. Skipped without CUDA."""
import pytest
import torch

import data
from coconut import Coconut, load_gpt, naive_forward
from conftest import assert_compiled_equals_eager
from data import Curriculum, collate, tokenize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def setup(tiny_gpt2_dir, fixtures):
    gpt = load_gpt(str(tiny_gpt2_dir), dropout=0.0).cuda().eval()
    records = data.load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")[:8]
    return gpt, tokenize(records)[0]


def test_cuda_cached_forward_equals_naive(setup):
    gpt, tokenized = setup
    cur = Curriculum(max_latent_stage=3)
    batch = collate([cur.example(t, s) for t, s in zip(tokenized, [0, 1, 2, 3, 4, 4, 2, 0])]).to("cuda")
    losses = Coconut(gpt)(batch)
    naive = naive_forward(gpt, batch)
    assert (losses.mean() - naive.mean()).abs() <= 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = Coconut(gpt)(batch)
    assert bf16.dtype == torch.float32 and (bf16.mean() - losses.mean()).abs() <= 2e-2 * losses.mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_generation_equals_eager(setup, dtype):
    import torch._dynamo
    from torch._dynamo.utils import counters
    gpt, tokenized = setup
    model = Coconut(gpt)
    cur = Curriculum(max_latent_stage=3)
    torch._dynamo.reset()
    counters.clear()
    step = model.compiled_step()  # mode="reduce-overhead" on CUDA: CUDA graphs
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for chunk in (tokenized[:4], tokenized[4:]):
            batch = collate([cur.prompt(t, 4) for t in chunk], align_ends=True).to("cuda")
            compiled = model.generate(batch, max_new_tokens=24, step=step)
            eager = model.generate(batch, max_new_tokens=24)
            assert compiled.tokens == eager.tokens and compiled.n_tokens == eager.n_tokens
            assert torch.allclose(compiled.thoughts, eager.thoughts, atol=1e-2 if dtype == torch.bfloat16 else 1e-4)
    assert counters["stats"]["unique_graphs"] <= 2


def test_cuda_compiled_training_equals_eager(setup):
    """train.py --compile on a GPU: the whole loss compiled (inductor's kernels), one graph per number of thoughts."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    gpt, tokenized = setup
    torch._dynamo.reset()
    counters.clear()
    model = Coconut(gpt).train()  # dropout is 0.0 in this fixture: compiled and eager see the same masks (none)
    compiled = model.compiled()
    cur = Curriculum(max_latent_stage=2)
    batches = [collate([cur.example(t, s) for t, s in zip(tokenized, stages)]).to("cuda")
               for stages in ([1, 2, 0, 2], [2, 1, 1, 0], [1, 1, 0, 1])]
    assert_compiled_equals_eager(compiled, model, batches, loss_rtol=1e-4, grad_rtol=1e-3)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]  # 1 and 2 thoughts
