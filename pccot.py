"""
PCCoT: the continuous thoughts in parallel, by Jacobi iteration (Wu et al. 2025, arXiv:2506.18582; the authors'
code: github.com/whyNLP/PCCoT, models/modeling_gpt2.py). A visible delta on coconut.py and codi.py.

Coconut computes n thoughts in n sequential one-column passes. PCCoT guesses them all, then refines them all at
once: pass 0 reads the question, <bot> and n placeholder <latent> tokens; latent 1 is the output at <bot> (exact),
latent k+1 the output at placeholder k. Each of T iterations runs the n latents together on the question's KV
cache (causal among themselves) and sets latent k+1 to the output at latent k. Latent k+1 is exact once latents 1
to k are: iteration t outputs t+1 latents of the sequential chain. The answer reads the cache of the T-th iteration,
whose inputs (the latents that were fed to it) begin with T latents of the chain (tests/test_successors.py). 1 + T + 1 passes of width n
instead of n + 2 passes. The loss is CODI's (codi.py) with PCCoT's choices: no projection (GPT-2), the distilled
layers are the n_layer block outputs (not the embeddings), the targets the teacher pass's own states, detached;
the answer piece is "The answer is:" then the answer with no space, and "The answer is:" is given at inference.

    model = PCCoT(load_gpt("gpt2"), iterations=3)
    losses = model(data.collate(examples))   # every row with the same number of latents (24 in the GSM8k recipe)

Deviation from the released code: the iterations mask the question's left padding (theirs attend to it).
"""
import torch

from codi import SelfDistillation
from coconut import _compute_dtype
from gpt import KVCache


class PCCoT(SelfDistillation):
    first_layer = 1

    def __init__(self, gpt, iterations=3):
        super().__init__(gpt, feedback=True)
        self.iterations = iterations

    def hidden(self, batch, layers=False):
        """Coconut.hidden, the thoughts computed by Jacobi iterations instead of one at a time."""
        gpt = self.gpt
        B, T = batch.ids.shape
        n, L0 = batch.max_latents, batch.first_latent
        if n == 0:
            return super().hidden(batch, layers)
        if not torch.compiler.is_compiling() and not bool((batch.n_latents == n).all()):  # (no data-dependent check in a graph)
            raise ValueError("PCCoT runs every row's latents together: every row needs the same number of latents")
        embeds = gpt.embed(batch.ids)  # (B, T, C)
        cache = KVCache(gpt.config, B, T, embeds.device, _compute_dtype(embeds))
        run = self._runner(batch, cache, layers)
        h0, s0 = run(0, L0 + n, embeds[:, :L0 + n])  # question, <bot>, n placeholders
        fed, out = self.iterate(self.thought(h0[:, L0 - 1:L0 + n - 1]), run, L0, n)
        hs = [(h0[:, :L0], [x[:, :L0] for x in s0]), out or (h0[:, L0:], [x[:, L0:] for x in s0])]
        if L0 + n < T:
            hs.append(run(L0 + n, T, embeds[:, L0 + n:]))  # the answer, on the cache of the last iteration
        h = torch.cat([h for h, _ in hs], dim=1)
        states = [torch.cat(layer, dim=1) for layer in zip(*[s for _, s in hs])] if layers else None
        return h, fed, states

    def iterate(self, z, run, L0, n):
        """T Jacobi iterations from the latents z (B, n, C): every latent at once on the question's cache. Returns the
        latents fed to the last iteration (whose keys and values the cache holds) and its outputs (h, layers)."""
        out = None
        for _ in range(self.iterations):
            out = run(L0, L0 + n, z)
            fed, z = z, torch.cat([z[:, :1], self.thought(out[0][:, :-1])], dim=1)  # latent 1 stays: it is exact
        return (fed if out is not None else z), out

    def _runner(self, batch, cache, layers):
        gpt = self.gpt

        def run(start, end, x):  # columns [start, end) of the batch, attending to the cache before them
            cols = slice(start, end)
            out = gpt(embeds=x, pos=batch.pos[:, cols], mask=batch.mask[:, cols], cache=cache,
                      input_pos=torch.arange(start, end, device=x.device), layers=layers)
            return out if layers else (out, [])
        return run

    def prefill(self, batch, cache):
        """Generation's first passes: pass 0 and the T iterations, into the cache; the loop starts after the latents."""
        n, L0 = batch.max_latents, batch.first_latent
        if n == 0:
            return super().prefill(batch, cache)
        if not bool((batch.n_latents == n).all()):
            raise ValueError("PCCoT runs every row's latents together: every row needs the same number of latents")
        run = self._runner(batch, cache, False)
        h0, _ = run(0, L0 + n, self.gpt.embed(batch.ids[:, :L0 + n]))
        fed, out = self.iterate(self.thought(h0[:, L0 - 1:L0 + n - 1]), run, L0, n)
        last = out[0][:, -1] if out is not None else h0[:, -1]
        return last.contiguous(), L0 + n, list(fed.unbind(1))


# -----------------------------------------------------------------------------------------------------------
# The definition, computed the slow way: each latent of each iteration recomputes everything before it.

def naive_latents(gpt, ids, first_latent, n, iterations):
    """The latents (1, n, C) fed to the last iteration, for one row without padding (ids (1, T), its placeholders at
    first_latent..first_latent+n-1), one latent at a time: latent k+1 of iteration t+1 is the last hidden state of
    the question, <bot> and latents 1..k of iteration t, recomputed from scratch."""
    embeds = gpt.embed(ids)
    q = embeds[:, :first_latent]
    z = [gpt(embeds=embeds[:, :first_latent + k])[:, -1:] for k in range(n)]  # pass 0: <bot>, then placeholders
    fed = z
    for _ in range(iterations):
        fed = z
        z = [z[0]] + [gpt(embeds=torch.cat([q, *fed[:k + 1]], dim=1))[:, -1:] for k in range(n - 1)]
    return torch.cat(fed, dim=1)
