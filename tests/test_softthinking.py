"""Soft Thinking (softthinking.py) against its definition: each concept token computed one list at a time, and
batched cached generation against one prompt at a time, recomputing the whole sequence at every step."""
import pytest
import torch

import data
from conftest import gpt_with_latent_tokens
from data import Curriculum, collate, tokenize
from softthinking import THINK_END, Settings, SoftThinking, concept_tokens, naive_concept_token, naive_generate


@pytest.fixture(scope="module")
def gpt(tiny_gpt2_dir):
    return gpt_with_latent_tokens(tiny_gpt2_dir)


@pytest.mark.parametrize("settings", [Settings(), Settings(temperature=1.5, top_p=0.5, min_p=0.2, max_topk=4),
                                      Settings(top_k=3)])
def test_concept_tokens_are_their_definition(settings):
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * torch.tensor([0.5, 1, 2, 4, 8, 16])[:, None]  # flat to peaked
    weights, rows, entropy = concept_tokens(logits, settings)
    sizes = []
    for b in range(len(logits)):
        naive, naive_entropy = naive_concept_token(logits[b], settings)
        kept = weights[b] > 0
        assert rows[b][kept].tolist() == [i for i, _ in naive]
        assert torch.allclose(weights[b][kept].double(), torch.tensor([w for _, w in naive], dtype=torch.float64), atol=1e-6)
        assert entropy[b].item() == pytest.approx(naive_entropy, rel=1e-5)
        sizes.append(len(naive))
    assert min(sizes) == 1 and max(sizes) > 2  # peaked rows collapse to one token, flat ones mix several


@pytest.mark.parametrize("settings", [Settings(temperature=2.0),  # thinks to the end: Cold Stop never fires
                                      Settings(temperature=2.0, cold_stop_entropy=100.0, cold_stop_steps=3)])
def test_batched_generation_is_one_prompt_at_a_time(gpt, settings):
    """Padded prompts of different lengths at once, against each alone without a cache: the same tokens, the same
    concept tokens; with Cold Stop after 3 steps, "###" is written there and the rest is greedy."""
    records = data.load_dataset("shellgame", "test")[:2] + data.load_dataset("reachability", "test")[:2]
    cot = Curriculum(method="cot")
    prompts = [cot.prompt(t, 0) for t in tokenize(records, method="cot")[0]]
    assert len({len(p.ids) for p in prompts}) > 1
    model = SoftThinking(gpt, settings).eval()
    out = model.generate(collate(prompts, align_ends=True), max_new_tokens=8)
    for i, p in enumerate(prompts):
        tokens, concepts = naive_generate(gpt, p, 8, settings)
        assert out.tokens[i] == tokens
        assert [ids for ids, _ in out.concepts[i]] == [ids for ids, _ in concepts]
        for (_, w), (_, naive) in zip(out.concepts[i], concepts):
            assert torch.allclose(torch.tensor(w, dtype=torch.float64), torch.tensor(naive, dtype=torch.float64), atol=1e-5)
        assert out.n_tokens[i] == len(tokens) - (tokens[-1] == data.EOS)
        if settings.cold_stop_steps == 3:
            assert tokens[2] == THINK_END and len(concepts) == 2
        else:
            assert THINK_END not in tokens and len(concepts) == len(tokens)
    assert any(len(ids) > 1 for row in out.concepts for ids, _ in row)  # mixtures, not single tokens


def test_refuses_prompts_with_thoughts(gpt):
    records = data.load_dataset("shellgame", "test")[:2]
    cur = Curriculum(method="coconut", max_latent_stage=2)
    prompts = [cur.prompt(t, 3) for t in tokenize(records)[0]]
    with pytest.raises(ValueError, match="chain-of-thought model"):
        SoftThinking(gpt).generate(collate(prompts, align_ends=True), max_new_tokens=4)
