"""gpt.py against its definition: Hugging Face's GPT2LMHeadModel, and a full forward for the KV cache."""
import json

import pytest
import torch

from gpt import GPT, GPTConfig, KVCache

# Three rows of different lengths: right padding for rows 0/1, left padding for row 2 (whose position ids
# restart at 0 after its pad), as the Coconut collator makes them.
LENGTHS = [9, 6, 4]
T = 9


def padded_batch(vocab=50257, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (3, T), generator=g)
    mask = torch.zeros(3, T, dtype=torch.bool)
    pos = torch.zeros(3, T, dtype=torch.long)
    for row, n in enumerate(LENGTHS):
        start = T - n if row == 2 else 0
        mask[row, start:start + n] = True
        pos[row, start:start + n] = torch.arange(n)
    return idx, mask, pos


def load_both(path):
    from transformers import GPT2LMHeadModel
    ours = GPT.from_pretrained(path).eval()
    theirs = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    return ours, theirs


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_gpt2_bin_dir"])
def test_logits_match_transformers(fixture, request):
    ours, theirs = load_both(request.getfixturevalue(fixture))
    idx, mask, pos = padded_batch()
    with torch.no_grad():
        logits = ours.logits(ours(idx, pos=pos, mask=mask))
        ref = theirs(input_ids=idx, attention_mask=mask.long(), position_ids=pos).logits
    assert (logits - ref)[mask].abs().max() <= 1e-4
    assert ref[mask].abs().max() > 1.0  # the comparison is not between two near-zero tensors


def greedy(model, idx, mask, steps):
    """Greedy decoding with the KV cache: prefill the left-padded prompts, then one token at a time."""
    B, T = idx.shape
    cache = KVCache(model.config, B, T + steps)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    h = model(idx, pos=pos, mask=mask, cache=cache, input_pos=torch.arange(T))
    next_pos, out = pos[:, -1:] + 1, []
    for t in range(steps):
        token = model.logits(h[:, -1]).argmax(-1, keepdim=True)  # (B, 1)
        out.append(token)
        h = model(token, pos=next_pos + t, cache=cache, input_pos=torch.tensor([T + t]))
    return torch.cat(out, 1)


def test_greedy_generation_matches_transformers(tiny_gpt2_dir):
    ours, theirs = load_both(tiny_gpt2_dir)
    idx, _, _ = padded_batch()
    mask = torch.zeros_like(idx, dtype=torch.bool)
    for row, n in enumerate(LENGTHS):  # left padding, as generation wants it
        mask[row, T - n:] = True
    idx = idx.masked_fill(~mask, 50256)
    with torch.no_grad():
        tokens = greedy(ours, idx, mask, 20)
        ref = theirs.generate(idx, attention_mask=mask.long(), max_new_tokens=20, do_sample=False,
                              pad_token_id=50256)[:, T:]
    assert torch.equal(tokens, ref)
    assert len(set(tokens.flatten().tolist())) > 3  # not one token repeated


def test_cached_decoding_equals_full_forward(tiny_gpt2_dir):
    model = GPT.from_pretrained(tiny_gpt2_dir).eval()
    idx, mask, pos = padded_batch()
    with torch.no_grad():
        full = model(idx, pos=pos, mask=mask)
        cache = KVCache(model.config, 3, 16)
        parts = [model(idx[:, :4], pos=pos[:, :4], mask=mask[:, :4], cache=cache, input_pos=torch.arange(4))]
        for t in range(4, T):
            parts.append(model(idx[:, t:t + 1], pos=pos[:, t:t + 1], mask=mask[:, t:t + 1], cache=cache,
                               input_pos=torch.tensor([t])))
        cached = torch.cat(parts, 1)
        # Each row alone, without padding, gives what it gets in the padded batch.
        for row in range(3):
            alone = model(idx[row:row + 1, mask[row]])
            assert (alone[0] - full[row, mask[row]]).abs().max() <= 1e-5
    assert (cached - full)[mask].abs().max() <= 1e-5


def test_cache_rewind(tiny_gpt2_dir):
    """Writing again from an earlier column replaces what was there: the result is a fresh forward's."""
    model = GPT.from_pretrained(tiny_gpt2_dir).eval()
    a, b = torch.randint(0, 50257, (2, 1, 8)).unbind(0)
    with torch.no_grad():
        cache = KVCache(model.config, 1, 8)
        model(a, cache=cache, input_pos=torch.arange(8))
        h = model(b[:, 5:], cache=cache, input_pos=torch.arange(5, 8))  # rewind to column 5
        ref = model(torch.cat([a[:, :5], b[:, 5:]], 1))[:, 5:]
    assert (h - ref).abs().max() <= 1e-5


def test_training_through_cache_has_gradients(tiny_gpt2_dir):
    """Writes that autograd needs are out of place: gradients through a cached forward equal a full one's."""
    model = GPT.from_pretrained(tiny_gpt2_dir)
    model.eval()
    idx = torch.randint(0, 50257, (2, 8))
    targets = torch.randint(0, 50257, (2 * 8,))

    def loss(h):
        return torch.nn.functional.cross_entropy(model.logits(h).flatten(0, 1), targets)

    loss(model(idx)).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cache = KVCache(model.config, 2, 8)
    h = torch.cat([model(idx[:, :5], cache=cache, input_pos=torch.arange(5))]
                  + [model(idx[:, t:t + 1], cache=cache, input_pos=torch.tensor([t])) for t in range(5, 8)], 1)
    loss(h).backward()
    for p, g in zip(model.parameters(), ref):
        assert (p.grad - g).norm() <= 1e-4 * g.norm()


def test_compiled_step_does_not_recompile(tiny_gpt2_dir):
    import torch._dynamo
    from torch._dynamo.utils import counters
    model = GPT.from_pretrained(tiny_gpt2_dir).eval()
    torch._dynamo.reset()
    counters.clear()

    @torch.compile
    def step(token, pos, cache, input_pos):
        return model.logits(model(token, pos=pos, cache=cache, input_pos=input_pos)[:, -1])

    with torch.no_grad():
        cache = KVCache(model.config, 2, 32)
        token = torch.zeros(2, 1, dtype=torch.long)
        for t in range(12):
            pos = torch.full((2, 1), t)
            token = step(token, pos, cache, torch.tensor([t])).argmax(-1, keepdim=True)
        eager_cache = KVCache(model.config, 2, 32)
        ref = model.logits(model(torch.zeros(2, 1, dtype=torch.long), cache=eager_cache,
                                 input_pos=torch.tensor([0]))[:, -1])
    frames = counters["stats"]["unique_graphs"]
    assert frames <= 2, f"{frames} graphs compiled for 12 steps"  # at most one more once t is no longer 0
    assert torch.allclose(step(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long),
                               KVCache(model.config, 2, 32), torch.tensor([0])), ref, atol=1e-5)


def test_grow_vocab(tiny_gpt2_dir):
    model = GPT.from_pretrained(tiny_gpt2_dir)
    old = model.transformer.wte.weight.detach().clone()
    model.grow_vocab(50260, init_row=16791)
    w = model.transformer.wte.weight
    assert w.shape == (50260, 32) and model.config.vocab_size == 50260
    assert torch.equal(w[:50257], old) and all(torch.equal(w[i], old[16791]) for i in range(50257, 50260))
    assert model.logits(torch.randn(1, 32)).shape == (1, 50260)
    mean_model = GPT.from_pretrained(tiny_gpt2_dir)
    mean_model.grow_vocab(50260)
    assert torch.allclose(mean_model.transformer.wte.weight[50259], old.mean(0))


def test_scratch_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=128, vocab_size=1000, block_size=64))
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - 0.02 / 4) < 5e-4  # 1/sqrt(2*8)


def test_loading_errors(tmp_path, tiny_gpt2_dir, monkeypatch):
    with pytest.raises(ValueError, match="unknown GPT-2 'gpt3'"):
        GPT.from_pretrained("gpt3")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        (tmp_path / "config.json").write_text((tiny_gpt2_dir / "config.json").read_text())
        GPT.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((tiny_gpt2_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    (bad / "model.safetensors").symlink_to(tiny_gpt2_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: transformer.h.0.attn.c_attn.bias has shape \(96,\), but the config asks for \(192,\)"):
        GPT.from_pretrained(bad)
    # No network and nothing cached: one clear message, whether offline or the Hub is unreachable.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="could not get GPT-2 'gpt2' from the Hugging Face Hub"):
        GPT.from_pretrained("gpt2")


def test_save_load_roundtrip_and_corrupt_checkpoint(tmp_path, tiny_gpt2_dir):
    model = GPT.from_pretrained(tiny_gpt2_dir).eval()
    model.grow_vocab(50260)
    model.save(tmp_path)
    loaded = GPT.from_pretrained(tmp_path).eval()  # a checkpoint of ours loads through the same entry point
    idx = torch.randint(0, 50260, (2, 7))
    assert loaded.config == model.config and torch.equal(loaded(idx), model(idx))
    (tmp_path / "model.json").rename(tmp_path / "lost.json")  # a checkpoint without its config: neither kind
    with pytest.raises(FileNotFoundError,
                       match="neither a checkpoint of this project .model.json and model.safetensors"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "lost.json").rename(tmp_path / "model.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        GPT.load(tmp_path)
