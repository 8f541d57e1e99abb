"""
SIM-CoT: each group of continuous thoughts supervised with the step it replaces (Wei et al. 2025, arXiv:2509.20317;
the authors' code: github.com/InternLM/SIM-CoT, Coconut/coconut.py, CoconutGPT_Same_Word_Embedding). A visible
delta on coconut.py: Coconut's curriculum and loop, plus an auxiliary step decoder in training only.

The step decoder is a separate GPT (initialised as the model starts: from GPT-2's weights, or the same random
init from scratch), with GPT-2's vocabulary: no rows for <bot>, <eot> and <latent>, which it never writes (the
authors' decoder is GPT-2 itself, never resized). For each group of c_thought thoughts it reads those thoughts,
then the tokens of the step they replace (embedded by the model's own token embedding), and is trained to write
that step, then EOS (positions from 1, as in the authors' code). The targets are the steps that the stage removed:
group i writes step i, the last group of the schedule (max_latent_stage) also the steps after its own, joined by
"\\n", which happens only at the final stage, when every step is removed; a group with no step left writes "### X"
(data.Curriculum.step_targets). Its loss is each step's summed token cross-entropy, averaged over the steps (the
authors': the mean over groups of the mean over rows), added to Coconut's. Gradients reach the thoughts, so the
whole chain. The decoder trains in eval mode, without dropout, as the authors' does (their train() switches the
base model only). Generation is Coconut's: the decoder is not used at inference.

    model = SimCoT(load_gpt("gpt2"), without_latent_tokens(load_gpt("gpt2")))
    losses = model(data.collate(examples))   # (N + M,): Coconut's token losses, then each decoded step's
"""
import dataclasses

import torch
import torch.nn.functional as F

from coconut import Coconut, token_losses
from data import BOT, EOT, LATENT
from gpt import GPT


class SimCoT(Coconut):

    def __init__(self, gpt, decoder):
        super().__init__(gpt, feedback=True)
        self.decoder = decoder

    def train(self, mode=True):
        """The step decoder stays in eval mode: no dropout in it, as in the authors' code."""
        super().train(mode)
        self.decoder.eval()
        return self

    def forward(self, batch, return_thoughts=False):
        """Per-item losses: Coconut's supervised tokens (N,), then each decoded step's summed cross-entropy (M,)."""
        h, thoughts, _ = self.hidden(batch)
        losses = torch.cat([token_losses(self.gpt, h, batch), self.step_losses(thoughts, batch.steps)])
        if len(batch.steps.ids) == 0 and self.training:
            # No step to decode (stage 0): the decoder reads one position, weighted 0, so that DistributedDataParallel
            # finds every parameter used, as at every other step (each gets a gradient of 0, which changes nothing).
            losses = losses + 0.0 * self.decoder.logits(self.decoder(embeds=h[:1, :1])).sum()
        return (losses, thoughts) if return_thoughts else losses

    def step_losses(self, thoughts, steps):
        """Each step's loss (M,): the decoder reads the group's thoughts (from thoughts (B, n, C)), then the step."""
        M, S = steps.ids.shape
        if M == 0:
            return thoughts.new_zeros(0, dtype=torch.float32)
        c = steps.mask.shape[1] - S
        group = steps.groups[:, None] * c + torch.arange(c, device=thoughts.device)  # (M, c) the thoughts of each
        x = torch.cat([thoughts[steps.rows[:, None], group], self.gpt.embed(steps.ids)], dim=1)  # (M, c + S, C)
        pos = torch.arange(1, c + S + 1, device=x.device).expand(M, -1)
        h = self.decoder(embeds=x, pos=pos, mask=steps.mask)
        logits = self.decoder.logits(h.flatten(0, 1)[steps.target_idx])  # (K, vocab)
        ce = F.cross_entropy(logits.float(), self.decoder.rows(steps.targets), reduction="none")
        return torch.zeros(M, device=ce.device, dtype=ce.dtype).index_add(0, steps.items, ce)


def without_latent_tokens(gpt):
    """The step decoder as a run starts: a copy of a GPT (GPT-2, or the model from scratch) without the rows of
    <bot>, <eot> and <latent>, so that its softmax is over GPT-2's tokens only."""
    ids = gpt.config.tokens or list(range(gpt.config.vocab_size))
    keep = [row for row, token in enumerate(ids) if token not in (BOT, EOT, LATENT)]
    config = dataclasses.replace(gpt.config, vocab_size=len(keep),
                                 tokens=[ids[row] for row in keep] if gpt.config.tokens else None)
    state = gpt.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"][keep]
    decoder = GPT(config).to(gpt.transformer.wte.weight.device)
    decoder.load_state_dict(state)
    return decoder


# -----------------------------------------------------------------------------------------------------------
# The definition, computed the slow way.

def naive_step_loss(decoder, gpt, thoughts, target):
    """One step's loss, from its definition: the decoder reads the thoughts (1, c, C) and the target's tokens,
    positions from 1, no padding; the sum of the cross-entropy of each target token."""
    x = torch.cat([thoughts, gpt.embed(torch.tensor([target], device=thoughts.device))], dim=1)
    c = thoughts.shape[1]
    h = decoder(embeds=x, pos=torch.arange(1, x.shape[1] + 1, device=x.device)[None])
    logits = decoder.logits(h[0, c - 1:c - 1 + len(target)])
    return F.cross_entropy(logits.float(), decoder.rows(torch.tensor(target, device=x.device)), reduction="sum")
