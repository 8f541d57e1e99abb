"""
Coconut: a language model that reasons in continuous thoughts (Hao et al. 2024, arXiv:2412.06769).

Where a chain of thought would write a reasoning step as words, Coconut feeds the model's own last hidden
state (after ln_f: the vector the LM head would turn into a word) back in as the input embedding of the
next position. Each such vector is a continuous thought. A sequence at curriculum stage k reads

    question <bot> [thought] x k*c <eot> remaining steps ### answer <eos>

and only the part after <eot> is supervised; the thoughts learn through back-propagation along the chain.

Thoughts are sequential: thought p+1 is computed from the position of thought p. With every row's first
latent in one column (data.collate), a batch needs one pass over the prefix, one pass per latent column
(each reusing the KV cache of everything before it), and one pass over the rest: n thoughts cost n + 2
passes and no position is computed twice. tests/test_coconut.py checks this against the definition
(recompute the whole prefix for every thought).

    model = Coconut(load_gpt("gpt2"))               # GPT-2 with <bot>, <eot>, <latent> added
    losses = model(data.collate(examples))          # (N,) cross-entropy of each supervised token
    out = model.generate(data.collate(prompts, align_ends=True), max_new_tokens=64)

The methods that followed are subclasses, each in a file of its own: codi.py (a projection on the fed-back state:
`thought`; a teacher pass and a distillation of every layer's state: `hidden(batch, layers=True)`), pccot.py (the
thoughts by Jacobi iterations: `hidden` and generation's `prefill`), simcot.py (a step decoder on the thoughts),
softthinking.py (no training: a CoT model's generation reads back mixtures of token embeddings: `generate`).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data import EOS, VOCAB_SIZE, encode
from gpt import GPT, GPTConfig, KVCache


@dataclass
class Generation:
    tokens: list        # per row, the generated ids (thoughts excluded), up to and including EOS if reached
    n_tokens: list      # per row, thoughts + generated tokens before EOS: the paper's "# tokens"
    thoughts: torch.Tensor  # (B, n, C) the continuous thoughts fed back (rows with fewer: zeros beyond)


class Coconut(nn.Module):

    def __init__(self, gpt, feedback=True):
        super().__init__()
        self.gpt = gpt
        self.feedback = feedback  # False: latents keep their token's embedding (pause tokens, no thought)
        self._last_cache = (None, None)  # (shape, KVCache) of the last generation

    def forward(self, batch, return_thoughts=False):
        """Cross-entropy (N,) of each supervised token of a collated batch, and the thoughts (B, n, C) on request."""
        h, thoughts, _ = self.hidden(batch)
        losses = token_losses(self.gpt, h, batch)
        return (losses, thoughts) if return_thoughts else losses

    def thought(self, h):
        """The input embedding that a last hidden state h (..., C) becomes: h itself (CODI projects it)."""
        return h

    def hidden(self, batch, layers=False):
        """The final hidden states (B, T, C) of a collated batch, its thoughts fed back (B, n, C), and with layers
        the hidden states of every layer (gpt.forward's layers), each (B, T, C)."""
        gpt = self.gpt
        B, T = batch.ids.shape
        embeds = gpt.embed(batch.ids)  # (B, T, C)
        n, L0 = (batch.max_latents, batch.first_latent) if self.feedback else (0, T)
        thoughts = []
        if n == 0:  # no thought to wait for: one pass over everything
            out = gpt(embeds=embeds, pos=batch.pos, mask=batch.mask, layers=layers)
            h, states = out if layers else (out, None)
            return h, h[:, :0], states
        cache = KVCache(gpt.config, B, T, embeds.device, _compute_dtype(embeds))

        def run(start, end, x):  # columns [start, end) of the batch, attending to the cache before them
            cols = slice(start, end)
            out = gpt(embeds=x, pos=batch.pos[:, cols], mask=batch.mask[:, cols], cache=cache,
                      input_pos=torch.arange(start, end, device=x.device), layers=layers)
            return out if layers else (out, [])

        hs = [run(0, L0, embeds[:, :L0])]  # everything before the first latent
        for p in range(n):
            thought = self.thought(hs[-1][0][:, -1:])  # (B, 1, C): from the last hidden state of the previous column
            thoughts.append(thought)
            # Rows with fewer latents hold an ordinary token (<eot> or later) here: it keeps its embedding.
            has_latent = (batch.n_latents > p)[:, None, None]
            hs.append(run(L0 + p, L0 + p + 1, torch.where(has_latent, thought, embeds[:, L0 + p:L0 + p + 1])))
        if L0 + n < T:
            hs.append(run(L0 + n, T, embeds[:, L0 + n:]))
        h = torch.cat([h for h, _ in hs], dim=1)  # (B, T, C)
        states = [torch.cat(layer, dim=1) for layer in zip(*[s for _, s in hs])] if layers else None
        return h, torch.cat(thoughts, dim=1), states

    def save(self, path):
        """Write the model into a checkpoint directory: the GPT, and in extras.safetensors what a method adds to it
        (CODI's projection, SIM-CoT's step decoder, LoRA's adapters)."""
        self.gpt.save(path)
        extras = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("gpt.")}
        if extras:
            save_file(extras, Path(path) / "extras.safetensors")

    def load_extras(self, path):
        """Read what a method adds to the GPT from a checkpoint directory (what save wrote, that this model has)."""
        ours = {k for k in self.state_dict() if not k.startswith("gpt.")}
        if not ours:
            return
        file = Path(path) / "extras.safetensors"
        try:
            extras = load_file(file)
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{file}: not a readable checkpoint file ({e})") from e
        if not ours <= set(extras):
            raise ValueError(f"{file}: no {sorted(ours - set(extras))[:3]}: the checkpoint of another method")
        shapes = {k: v.shape for k, v in self.state_dict().items()}
        for k in sorted(ours):
            if extras[k].shape != shapes[k]:
                raise ValueError(f"{file}: {k} has shape {tuple(extras[k].shape)}, this model's {tuple(shapes[k])}")
        self.load_state_dict({k: extras[k] for k in ours}, strict=False)

    @torch.no_grad()
    def generate(self, batch, max_new_tokens, step=None):
        """Greedy decoding of collated prompts (data.collate(..., align_ends=True)), all rows at once.

        The prefix before the common column is one pass. From there every column is one step of one
        position per row: a thought for a row still in its latents, its own prompt token for a row still in
        its prompt, and otherwise its greedy choice from the column before. Rows stop at EOS or after
        max_new_tokens. `step` is a compiled `decode_step` (see compiled_step); shapes never change.
        """
        gpt, step = self.gpt, step or self.decode_step
        B, T = batch.ids.shape
        device, L0 = batch.ids.device, batch.first_latent
        n_thoughts = batch.n_latents if self.feedback else torch.zeros_like(batch.n_latents)  # (B,)
        thought_end = L0 + n_thoughts           # (B,) a row takes thoughts in columns [L0, thought_end)
        stop = batch.ends + max_new_tokens      # (B,) and generates tokens in columns [ends, stop)
        last_thought, last_stop = int(thought_end.max()), int(stop.max())
        L = min(_bucket(last_stop), gpt.config.block_size)
        cache = self._cache(B, L, device, _compute_dtype(gpt.transformer.wte.weight))
        tokens = torch.full((B, L), EOS, dtype=torch.long, device=device)
        tokens[:, :T] = batch.ids
        h, start, thoughts = self.prefill(batch, cache)  # (B, C) hidden state of column start-1
        next_token = self.greedy(h)  # (B,)
        columns = torch.arange(L, device=device)  # step inputs are slices of it: no host-to-device copy per step
        n_generated = torch.zeros(B, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)  # reached EOS
        for col in range(start, min(last_stop, L)):
            if col < last_thought:
                thoughts.append(torch.where((col < thought_end)[:, None], self.thought(h), 0.0))
            generating = (col >= batch.ends) & (col < stop) & ~done
            tokens[:, col] = torch.where(generating, next_token, tokens[:, col])
            n_generated += generating & (next_token != EOS)
            done |= generating & (next_token == EOS)
            # Waiting for the device costs a step's worth of overlap: look whether all rows are done only now and then.
            if col == L - 1 or (col >= last_thought and col % 8 == 0 and (done | (col + 1 >= stop)).all()):
                break
            pos = (col - batch.starts)[:, None]  # (B, 1)
            h, next_token = step(h, tokens[:, col], col < thought_end, pos, columns[col:col + 1], cache)
            h, next_token = h.clone(), next_token.clone()  # CUDA graphs reuse their output buffers
        tokens, ends, n_generated, done = (t.tolist() for t in (tokens, batch.ends, n_generated, done))
        return Generation([row[e:e + g + d] for row, e, g, d in zip(tokens, ends, n_generated, done)],
                          [t + g for t, g in zip(n_thoughts.tolist(), n_generated)],
                          torch.stack(thoughts, 1) if thoughts else h.new_zeros(B, 0, gpt.config.n_embd))

    def prefill(self, batch, cache):
        """Generation's first pass, into the cache: the columns before the first latent. Returns the hidden state
        (B, C) of its last column, the column that the loop of one-column steps starts at, and the thoughts it
        computed (a list of (B, C); none here: the loop computes them)."""
        L0 = batch.first_latent
        h = self.gpt(batch.ids[:, :L0], pos=batch.pos[:, :L0], mask=batch.mask[:, :L0], cache=cache,
                     input_pos=torch.arange(L0, device=batch.ids.device))
        return h[:, -1].contiguous(), L0, []

    def _cache(self, *shape):
        """A KV cache for generation, kept for the next batch of the same shape: CUDA graphs recorded for it stay
        valid. Leftovers from the last batch are never read: every column is written before it is attended to."""
        if self._last_cache[0] != shape:
            B, L, device, dtype = shape
            self._last_cache = shape, KVCache(self.gpt.config, B, L, device, dtype)
        return self._last_cache[1]

    def decode_step(self, h, token, is_thought, pos, input_pos, cache):
        """One column for every row: input a thought (h) or a token; return the new h (B, C) and greedy token."""
        x = torch.where(is_thought[:, None], self.thought(h), self.gpt.embed(token))[:, None]  # (B, 1, C)
        h = self.gpt(embeds=x, pos=pos, cache=cache, input_pos=input_pos)[:, 0]
        return h, self.greedy(h)

    def greedy(self, h):
        """The greedy choice of token (B,) after final hidden states h (B, C)."""
        return self.gpt.ids(self.gpt.logits(h).argmax(-1))

    def compiled(self, backend="inductor"):
        """forward under torch.compile, for training: every pass of the loop in one graph, so that AOTAutograd makes
        one forward and one backward graph for each number of thoughts, whatever the lengths (dynamic shapes).
        Wrapped in DistributedDataParallel, the graph is cut at its gradient buckets (torch._dynamo.config.optimize_ddp),
        so that their reductions overlap the backward pass."""
        return torch.compile(self, fullgraph=True, dynamic=True, backend=backend)

    def compiled_step(self):
        """decode_step under torch.compile; on CUDA with CUDA graphs, since every step has the same shapes."""
        mode = "reduce-overhead" if next(self.parameters()).is_cuda else None
        return torch.compile(self.decode_step, mode=mode, fullgraph=True)


def load_gpt(init_from, new_token_init="copy", dropout=0.1, tokens=None, **scratch):
    """The GPT of a Coconut model, its vocabulary holding the three latent tokens (paper §3).

    init_from: a GPT-2 name, a Hugging Face GPT-2 directory, a checkpoint of ours, or "scratch" (GPTConfig
    fields in `scratch`; `tokens`: the token ids it needs rows for, else all of VOCAB_SIZE). A plain GPT-2
    gets <bot>, <eot> and <latent> appended, each initialised as a copy of the embedding of "<<"
    (new_token_init="copy", the authors' code since August 2025) or as the mean of all rows ("mean").
    """
    if init_from == "scratch":
        vocab = dict(vocab_size=len(tokens), tokens=list(tokens)) if tokens is not None else dict(vocab_size=VOCAB_SIZE)
        gpt = GPT(GPTConfig(dropout=dropout, **vocab, **scratch))
        # A thought is ln_f's output, whose scale per dimension is ln_f's gain (1 at GPT-2's init), fed back where a
        # token embedding (0.02) would be, with a position embedding (0.02) added: it would drown the position of
        # its column, which a thought needs to find what to work on. From scratch, embeddings and the gain start at
        # one scale, n_embd^-1/4, so that a thought enters like a token and the tied LM head starts at unit logits.
        scale = gpt.config.n_embd ** -0.25
        with torch.no_grad():
            gpt.transformer.wte.weight.normal_(0.0, scale)
            gpt.transformer.wpe.weight.normal_(0.0, scale)
            gpt.transformer.ln_f.weight.fill_(scale)
        return gpt
    gpt = GPT.from_pretrained(init_from, dropout)
    if gpt.config.tokens is not None:  # a model from scratch with a vocabulary of its own, latent tokens included
        return gpt
    if gpt.config.vocab_size == EOS + 1:
        gpt.grow_vocab(VOCAB_SIZE, init_row=encode("<<")[0] if new_token_init == "copy" else None)
    elif gpt.config.vocab_size != VOCAB_SIZE:
        raise ValueError(f"{init_from}: vocabulary of {gpt.config.vocab_size} tokens; expected GPT-2's "
                         f"{EOS + 1}, or {VOCAB_SIZE} with the latent tokens")
    return gpt


def token_losses(gpt, h, batch):
    """Cross-entropy (N,) of each supervised token, from the final hidden states h (B, T, C) of a batch."""
    # The LM head only where a next token is supervised: most positions are question, latents or padding.
    logits = gpt.logits(h.flatten(0, 1)[batch.target_idx])  # (N, vocab)
    return F.cross_entropy(logits.float(), gpt.rows(batch.targets), reduction="none")


# -----------------------------------------------------------------------------------------------------------
# The definition, computed the slow way: what the loop above must equal (tests), and what it is measured
# against (bench.py). Every thought recomputes everything before it, and nothing is cached.

def naive_forward(gpt, batch):
    """Per-token losses like Coconut.forward, recomputing the whole prefix for every latent column."""
    embeds = gpt.embed(batch.ids)  # (B, T, C)
    for p in range(batch.max_latents):
        col = batch.first_latent + p
        h = gpt(embeds=embeds[:, :col], pos=batch.pos[:, :col], mask=batch.mask[:, :col])[:, -1:]
        x = torch.where((batch.n_latents > p)[:, None, None], h, embeds[:, col:col + 1])
        embeds = torch.cat([embeds[:, :col], x, embeds[:, col + 1:]], dim=1)
    h = gpt(embeds=embeds, pos=batch.pos, mask=batch.mask)
    logits = gpt.logits(h.flatten(0, 1)[batch.target_idx])  # (N, vocab)
    return F.cross_entropy(logits.float(), gpt.rows(batch.targets), reduction="none")


def naive_thoughts(gpt, example):
    """The input embeddings (1, T, C) of one example (a data.Example) with its thoughts in place of its latents,
    each thought the last hidden state of the whole sequence before it, recomputed."""
    embeds = gpt.embed(torch.tensor([example.ids], device=gpt.transformer.wte.weight.device))  # (1, T, C)
    for p in range(example.n_latents):
        col = example.first_latent + p
        thought = gpt(embeds=embeds[:, :col])[:, -1:]
        embeds = torch.cat([embeds[:, :col], thought, embeds[:, col + 1:]], dim=1)
    return embeds


def naive_generate(gpt, example, max_new_tokens, feedback=True):
    """Greedy decoding of one prompt (a data.Example), recomputing the whole sequence for every position."""
    embeds = naive_thoughts(gpt, example) if feedback else gpt.embed(
        torch.tensor([example.ids], device=gpt.transformer.wte.weight.device))  # (1, T, C)
    out = []
    for _ in range(max_new_tokens):
        token = gpt.ids(gpt.logits(gpt(embeds=embeds)[:, -1]).argmax(-1))  # (1,)
        out.append(token.item())
        if out[-1] == EOS:
            break
        embeds = torch.cat([embeds, gpt.embed(token)[:, None]], dim=1)
    return out


def _compute_dtype(t):
    """The dtype activations (and so the KV cache) have: autocast's if it is on, else the tensor's."""
    device_type = t.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else t.dtype


def _bucket(n, size=64):
    """Round cache lengths up, so that a whole evaluation compiles the step for only a few shapes."""
    return -(-n // size) * size
