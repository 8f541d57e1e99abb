"""
Soft Thinking: a training-free continuous thought on a chain-of-thought model (Zhang et al. 2025, arXiv:2505.15778;
the authors' code: github.com/eric-ai-lab/Soft-Thinking, sglang_soft_thinking_pkg/python/sglang/srt/layers/sampler.py
and managers/schedule_batch.py). A visible delta on coconut.py: generation only, on a model trained with --method cot.

Where CoT writes one token of a step and reads it back, Soft Thinking reads back a "concept token": the mixture of
the likeliest tokens' embeddings, each weighted by its probability. The weights are the next-token distribution at
temperature 0.6, kept to its 30 likeliest tokens, then to the fewest whose mass reaches 0.95 (top-p), then to those
at least 0.001 of the likeliest's (min-p), then to the 10 likeliest, renormalised after each cut. The likeliest
token is what the step writes (the output text), and thinking ends when it is the token that ends the reasoning,
here "###" before the answer: that token and the answer after it are read back as plain tokens, greedily (the
authors sample after thinking; greedy is what every method of this project is evaluated with). "Cold Stop" ends
thinking early, writing "###", once the distribution's entropy has stayed below 0.01 for 256 steps in a row (a
chain of this project's tasks is far shorter: with the authors' settings it never fires here).

    model = SoftThinking(load_gpt("out/reachability-cot/best"))
    out = model.generate(data.collate(prompts, align_ends=True), max_new_tokens=24)   # out.concepts: the mixtures
"""
import math
from dataclasses import dataclass

import torch

from coconut import Coconut, Generation, _bucket, _compute_dtype
from data import ANSWER_MARK as THINK_END, EOS  # "###" ends the reasoning: the answer follows it


@dataclass(frozen=True)
class Settings:
    """The authors' settings (scripts/st/qwq32b_st_math.sh)."""
    temperature: float = 0.6
    top_k: int = 30
    top_p: float = 0.95
    min_p: float = 0.001
    max_topk: int = 10               # tokens in a concept token
    cold_stop_entropy: float = 0.01  # Cold Stop: thinking ends once the entropy stays below this ...
    cold_stop_steps: int = 256       # ... for this many steps in a row


@dataclass
class SoftGeneration(Generation):
    concepts: list = None  # per row, per step of thinking: (token ids, weights) of its concept token, likeliest first


def concept_tokens(logits, s):
    """The concept token of each row of logits (B, V): its weights (B, K) and rows (B, K), likeliest first, and the
    entropy (B,) of the distribution at the temperature."""
    probs = (logits.float() / s.temperature).softmax(-1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
    p, rows = probs.topk(min(s.top_k, probs.shape[-1]), dim=-1)  # sorted, likeliest first
    p = p / p.sum(-1, keepdim=True)
    p = torch.where(p.cumsum(-1) - p > s.top_p, 0.0, p)  # top-p: a token stays while the mass before it is within top_p
    p = p / p.sum(-1, keepdim=True)
    p = torch.where(p < p[:, :1] * s.min_p, 0.0, p)
    p = p / p.sum(-1, keepdim=True)
    p, rows = p[:, :s.max_topk], rows[:, :s.max_topk]
    return p / p.sum(-1, keepdim=True), rows, entropy


class SoftThinking(Coconut):

    def __init__(self, gpt, settings=Settings()):
        super().__init__(gpt, feedback=False)
        self.settings = settings

    @torch.no_grad()
    def generate(self, batch, max_new_tokens, step=None):
        """Coconut.generate's contract for prompts without latents (a CoT model's questions), all ending in one column
        (data.collate(..., align_ends=True)): each step reads back a concept token while its row thinks, then the
        greedy token. `step` (a compiled step) is not used: the loop keeps per-row state between steps."""
        if batch.max_latents:
            raise ValueError("Soft Thinking runs on a chain-of-thought model: prompts without latents (--method cot)")
        gpt, s = self.gpt, self.settings
        B, T = batch.ids.shape
        device = batch.ids.device
        L = min(_bucket(T + max_new_tokens), gpt.config.block_size)
        cache = self._cache(B, L, device, _compute_dtype(gpt.transformer.wte.weight))
        h = gpt(batch.ids, pos=batch.pos, mask=batch.mask, cache=cache, input_pos=torch.arange(T, device=device))[:, -1]
        thinking = torch.ones(B, dtype=torch.bool, device=device)
        low = torch.zeros(B, dtype=torch.long, device=device)  # steps in a row of low entropy
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens, mixtures, concepts = [], [], []
        for j in range(min(max_new_tokens, L - T)):
            weights, rows, entropy = concept_tokens(gpt.logits(h), s)  # (B, K), (B, K), (B,)
            token = gpt.ids(rows[:, 0])
            low = torch.where(entropy < s.cold_stop_entropy, low + 1, 0)
            token = torch.where(thinking & (low >= s.cold_stop_steps), THINK_END, token)  # Cold Stop
            thinking &= token != THINK_END
            soft = thinking & ~done & (token != EOS)  # (B,) the rows that read back a concept token
            mixture = (weights[..., None] * gpt.transformer.wte(rows)).sum(1)  # (B, C)
            x = torch.where(soft[:, None], mixture, gpt.embed(token))  # (B, C)
            tokens.append(torch.where(done, EOS, token))
            mixtures.append(torch.where(soft[:, None], mixture, 0.0))
            concepts.append((gpt.ids(rows), weights, soft))
            done |= token == EOS
            if bool(done.all()) or T + j + 1 == min(T + max_new_tokens, L):
                break
            h = gpt(embeds=x[:, None], pos=(T + j - batch.starts)[:, None], cache=cache,
                    input_pos=torch.arange(T + j, T + j + 1, device=device))[:, 0]
        out = [row[:row.index(EOS) + 1] if EOS in row else row for row in torch.stack(tokens, 1).tolist()]
        ids, weights, soft = (torch.stack(t, 1).tolist() for t in zip(*concepts))  # (B, steps, K) and (B, steps)
        kept = lambda w: len(w) - w.count(0.0)  # the cuts leave zeros at the end: the tokens kept come first
        return SoftGeneration(out, [len(r) - (r[-1] == EOS) for r in out],
                              torch.stack(mixtures, 1)[:, :max(map(sum, soft), default=0)],  # thinking comes first
                              [[(i[:kept(w)], w[:kept(w)]) for i, w, k in zip(ids[b], weights[b], soft[b]) if k]
                               for b in range(B)])


# -----------------------------------------------------------------------------------------------------------
# The definition, computed the slow way: one prompt, every step recomputing the whole sequence, each concept token
# from its definition, one list at a time.

def naive_concept_token(logits, s):
    """One row's concept token from the definition: [(token row, weight), ...], likeliest first, and the entropy."""
    probs = (logits.double() / s.temperature).softmax(-1).tolist()
    entropy = -sum(p * math.log(max(p, 1e-12)) for p in probs)
    kept = sorted(range(len(probs)), key=lambda i: -probs[i])[:s.top_k]
    renorm = lambda pairs: [(i, p / sum(q for _, q in pairs)) for i, p in pairs]
    kept = renorm([(i, probs[i]) for i in kept])
    mass, nucleus = 0.0, []
    for i, p in kept:
        if mass > s.top_p:
            break
        nucleus.append((i, p))
        mass += p
    kept = renorm(nucleus)
    kept = renorm([(i, p) for i, p in kept if p >= kept[0][1] * s.min_p])
    return renorm(kept[:s.max_topk]), entropy


def naive_generate(gpt, example, max_new_tokens, s=Settings()):
    """Soft Thinking's greedy decoding of one prompt (a data.Example without latents): the tokens, and the concept
    tokens [(token ids, weights), ...] read back while thinking."""
    device = gpt.transformer.wte.weight.device
    embeds = gpt.embed(torch.tensor([example.ids], device=device))  # (1, T, C)
    tokens, concepts, thinking, low = [], [], True, 0
    for _ in range(max_new_tokens):
        concept, entropy = naive_concept_token(gpt.logits(gpt(embeds=embeds)[0, -1]), s)
        token = gpt.ids(torch.tensor(concept[0][0], device=device)).item()
        low = low + 1 if entropy < s.cold_stop_entropy else 0
        if thinking and low >= s.cold_stop_steps:
            token = THINK_END
        thinking = thinking and token != THINK_END
        tokens.append(token)
        if token == EOS:
            break
        if thinking:
            rows = torch.tensor([r for r, _ in concept], device=device)
            x = sum(w * e for (_, w), e in zip(concept, gpt.transformer.wte(rows)))
            concepts.append((gpt.ids(rows).tolist(), [w for _, w in concept]))
        else:
            x = gpt.embed(torch.tensor(token, device=device))
        embeds = torch.cat([embeds, x.to(embeds.dtype)[None, None]], dim=1)
    return tokens, concepts
