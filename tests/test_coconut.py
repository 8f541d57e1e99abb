"""coconut.py against the definition of a continuous thought (the paper §3), on real ProsQA and GSM8k records.

The reference is deliberately naive (coconut.naive_forward, naive_generate), and run one row at a time:
no padding, no cache; for each latent in order, recompute the whole prefix and take its last hidden state.
"""
import pytest
import torch

import data
from coconut import Coconut, load_gpt, naive_forward, naive_generate
from conftest import assert_compiled_equals_eager, gpt_with_latent_tokens
from data import EOS, Curriculum, collate, tokenize


@pytest.fixture(scope="module")
def model(tiny_gpt2_dir):
    return Coconut(gpt_with_latent_tokens(tiny_gpt2_dir)).eval()


@pytest.fixture(scope="module")
def records(fixtures):
    prosqa = data.load_dataset("prosqa", "valid", data_dir=fixtures / "prosqa")[:6]
    gsm8k = data.load_dataset("gsm8k", "test", data_dir=fixtures / "gsm8k")[:6]
    return tokenize(prosqa)[0], tokenize(gsm8k)[0]


def mixed_examples(records, c_thought):
    """Rows of different lengths at different stages, latent-free rows (stage 0, cot) among them, and a row whose
    thoughts have no markers around them (the reachability preset's)."""
    prosqa, gsm8k = records
    cur = Curriculum(c_thought=c_thought, max_latent_stage=3)
    bare = Curriculum(c_thought=c_thought, max_latent_stage=3, markers=False)
    return [cur.example(prosqa[0], 2), cur.example(gsm8k[1], 0), cur.example(prosqa[2], 9),
            Curriculum(method="cot").example(gsm8k[3], 0), cur.example(gsm8k[4], 1), cur.example(prosqa[5], 3),
            bare.example(prosqa[1], 2)]


@pytest.mark.parametrize("c_thought", [1, 2])
def test_cached_forward_equals_naive_recomputation(model, records, c_thought):
    examples = mixed_examples(records, c_thought)
    batch = collate(examples)
    assert batch.max_latents == 3 * c_thought and (batch.n_latents == 0).sum() == 2
    losses = model(batch)
    losses.mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # The definition, one row at a time: no padding, no cache, no batch.
    naive = torch.cat([naive_forward(model.gpt, collate([e])) for e in examples])
    naive.mean().backward()
    assert losses.shape == naive.shape
    assert (losses.mean() - naive.mean()).abs() <= 1e-5
    assert ((losses - naive).abs() / naive.abs()).max() <= 1e-5  # each token's loss too
    for (name, p), g in zip(model.named_parameters(), grads):
        assert (p.grad - g).norm() <= 1e-4 * p.grad.norm(), name
    model.zero_grad()


def test_thoughts_are_fed_back(model, records):
    """Without feedback (pause tokens) the same batch gives other losses: the thoughts matter."""
    batch = collate(mixed_examples(records, 1))
    with torch.no_grad():
        losses, thoughts = model(batch, return_thoughts=True)
        pause = Coconut(model.gpt, feedback=False)(batch)
    assert thoughts.shape == (7, 3, model.gpt.config.n_embd)
    latent_rows = batch.n_latents > 0
    assert not torch.allclose(losses, pause)
    # The first thought is the last hidden state before the first latent: the <bot> position.
    prefix = model.gpt(batch.ids[:, :batch.first_latent], pos=batch.pos[:, :batch.first_latent],
                       mask=batch.mask[:, :batch.first_latent])
    assert torch.allclose(thoughts[latent_rows, 0], prefix[latent_rows, -1], atol=1e-5)


def test_batch_equals_rows_one_by_one(model, records):
    examples = mixed_examples(records, 2)
    batch = collate(examples)
    with torch.no_grad():
        losses = model(batch)
        rows = batch.target_idx // batch.ids.shape[1]
        for row, example in enumerate(examples):
            alone = model(collate([example]))
            assert ((losses[rows == row] - alone).abs() / alone).max() <= 1e-5


@pytest.mark.parametrize("method,pad,markers", [("coconut", True, None), ("coconut", False, None), ("cot", True, None),
                                                ("pause_as_thought", True, None), ("coconut", False, False)])
def test_batched_generation_equals_naive(model, records, method, pad, markers):
    prosqa, gsm8k = records
    cur = Curriculum(method=method, c_thought=2, max_latent_stage=3, pad_latent_to_max=pad, markers=markers)
    recs = [prosqa[0], gsm8k[1], prosqa[2], gsm8k[0], gsm8k[3]]  # gsm8k[0] has 2 steps: fewer thoughts unpadded
    prompts = [cur.prompt(r, stage) for r, stage in zip(recs, [1, 2, 4, 4, 0])]
    batch = collate(prompts, align_ends=True)
    gen_model = Coconut(model.gpt, feedback=cur.feedback)
    with torch.no_grad():
        out = gen_model.generate(batch, max_new_tokens=12)
        for row, prompt in enumerate(prompts):
            ref = naive_generate(model.gpt, prompt, 12, feedback=cur.feedback)
            assert out.tokens[row] == ref, row
            thoughts = prompt.n_latents if cur.feedback else 0
            assert out.n_tokens[row] == thoughts + len([t for t in ref if t != EOS])
    assert len({tuple(t) for t in out.tokens}) > 1  # rows differ: not one constant output


def test_compiled_generation_matches_and_does_not_recompile(model, records):
    import torch._dynamo
    from torch._dynamo.utils import counters
    prosqa, gsm8k = records
    cur = Curriculum(c_thought=1, max_latent_stage=3)
    batches = [collate([cur.prompt(r, 4) for r in recs], align_ends=True) for recs in (prosqa[:3], prosqa[3:6])]
    torch._dynamo.reset()
    counters.clear()
    step = model.compiled_step()
    with torch.no_grad():
        for batch in batches:
            compiled = model.generate(batch, max_new_tokens=16, step=step)
            eager = model.generate(batch, max_new_tokens=16)
            assert compiled.tokens == eager.tokens and compiled.n_tokens == eager.n_tokens
    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 2, f"{graphs} graphs compiled for two batches of ~20 steps each"


def test_compiled_training_matches_eager(tiny_gpt2_dir, records):
    """train.py --compile: the whole loss under torch.compile, backward included, as eager computes it, on real
    records at several stages; one graph for each number of thoughts over batches of every length, no break.
    AOTAutograd's graphs run as they are traced ("aot_eager"): on a CPU, generating and building C++ kernels for
    them takes minutes, and what is checked here (capture, graphs, their values) is the same."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    gpt = load_gpt(str(tiny_gpt2_dir))  # dropout 0.1 in training mode, as train.py runs it
    model = Coconut(gpt).train()
    compiled = model.compiled(backend="aot_eager")
    prosqa, gsm8k = records
    cur = Curriculum(c_thought=1, max_latent_stage=2)
    batches = [collate([cur.example(r, s) for r, s in zip(recs, stages)]) for recs, stages in (
        (prosqa[:3], [1, 2, 0]), (gsm8k[:4], [2, 2, 1, 3]), (prosqa[3:6] + gsm8k[4:5], [1, 0, 1, 1]),
        (gsm8k[2:6], [0, 3, 1, 2]))]
    assert len({b.ids.shape for b in batches}) == 4 and len({b.first_latent for b in batches}) == 4
    assert [b.max_latents for b in batches] == [2, 2, 1, 2]
    for batch in batches:  # shapes change from batch to batch; autograd must find what it saved intact
        compiled(batch).mean().backward()
    assert counters["stats"]["unique_graphs"] == 2  # 1 and 2 thoughts, whatever the lengths
    assert not counters["graph_break"]
    assert all(torch.isfinite(p.grad).all() for p in gpt.parameters())
    for m in gpt.modules():  # dropout off: now compiled and eager must agree
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.0
    assert_compiled_equals_eager(compiled, model, batches, loss_rtol=1e-5, grad_rtol=1e-4)


def test_compiled_training_inside_distributed_data_parallel_matches_eager(tiny_gpt2_dir, records):
    """train.py --compile under torchrun: DistributedDataParallel around the compiled loss (dynamo's DDP support
    then cuts the graph at gradient buckets) traces whole and computes what eager computes; one process suffices
    to check the composition, since tests/test_train.py checks that N processes equal one."""
    import socket

    import torch._dynamo
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    import train
    torch._dynamo.reset()
    counters.clear()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        gpt = load_gpt(str(tiny_gpt2_dir), dropout=0.0)
        model = Coconut(gpt).train()
        ddp = train.data_parallel(model.compiled(backend="aot_eager"))
        prosqa, gsm8k = records
        cur = Curriculum(c_thought=1, max_latent_stage=2)
        batches = [collate([cur.example(r, s) for r, s in zip(prosqa[:3], [1, 2, 0])]),
                   collate([cur.example(r, s) for r, s in zip(gsm8k[:3], [2, 2, 1])])]
        assert_compiled_equals_eager(ddp, model, batches, loss_rtol=1e-5, grad_rtol=1e-4)
        assert not counters["graph_break"]
    finally:
        dist.destroy_process_group()
