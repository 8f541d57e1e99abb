"""
CODI: continuous chain of thought by self-distillation (Shen et al. 2025, arXiv:2502.21074; the authors' code:
github.com/zhenyi4/codi, src/model.py, CODI.forward). A visible delta on coconut.py.

One model is both teacher and student, and there is no curriculum: from the first step the student reads

    question <bot> [thought] x 6 <eot> The answer is: X <eos>

where each thought is P(h), a projection of the last hidden state (Linear, GELU, Linear, LayerNorm), and the
teacher reads the written chain of thought but its last step, `question steps[:-1] The answer is: X <eos>`.
The loss is the student's cross-entropy, plus the teacher's, plus a distillation: at the ':' of "The answer is:"
(the position that predicts the answer), for every layer's hidden state l = 0..n_layer (the embeddings, each
block's output, ln_f's output), SmoothL1(student_l, teacher_l) over the width, divided by the standard deviation
of teacher_l over the rows and the width, averaged over the layers. The teacher's states are targets: no
gradient reaches the teacher through them.

    model = CODI(load_gpt("gpt2"))
    losses = model(data.collate(examples))   # (N + N_teacher + B,): student tokens, teacher tokens, distillation

Deviations from the released code, each named: the latent and answer passes mask the question's left padding
and give each row positions from 0 (theirs attend to the padding and shift positions: a row's result depends on
its batch); the standard deviation is over the rows of one forward pass (theirs: 64 per GPU), which makes this
one term of the loss depend on --micro_batch_size (the CODI preset sets it to its loss group).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from coconut import Coconut, token_losses
from data import EOT


class SelfDistillation(Coconut):
    """The loss CODI and PCCoT share: the student's and the teacher's cross-entropy, and the distillation."""
    first_layer = 0  # the layers distilled: CODI from the embeddings (0), PCCoT from the first block's output (1)

    def forward(self, batch, return_thoughts=False):
        """Per-item losses: the student's tokens (N,), the teacher's (N_t,), then each row's distillation (B,)."""
        gpt = self.gpt
        h, thoughts, states = self.hidden(batch, layers=True)
        student = token_losses(gpt, h, batch)
        t = batch.teacher
        th, t_states = gpt(t.ids, pos=t.pos, mask=t.mask, layers=True)
        teacher = token_losses(gpt, th, t)
        targets = self.teacher_targets(t, t_states)
        distill = distillation([s.flatten(0, 1)[batch.distill_idx] for s in states[self.first_layer:]],
                               [s.flatten(0, 1)[batch.teacher_distill_idx] for s in targets[self.first_layer:]])
        losses = torch.cat([student, teacher, distill])
        return (losses, thoughts) if return_thoughts else losses

    def teacher_targets(self, t, states):
        """The teacher's hidden states the student is distilled towards: the teacher pass's, detached."""
        return [s.detach() for s in states]


class CODI(SelfDistillation):

    def __init__(self, gpt):
        super().__init__(gpt, feedback=True)
        C = gpt.config.n_embd
        # Their prj: Dropout (0 in the GPT-2 recipe, left out), Linear, GELU, Linear, LayerNorm
        self.projection = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, C), nn.LayerNorm(C))

    def thought(self, h):
        return self.projection(h)

    def greedy(self, h):
        """The authors' generation leaves <eot> (the last row of their vocabulary) out of the greedy choice."""
        logits = self.gpt.logits(h)  # (B, vocab)
        eot = self.gpt.rows(torch.tensor([EOT], device=h.device))
        return self.gpt.ids(logits.index_fill(-1, eot, -torch.inf).argmax(-1))

    def teacher_targets(self, t, states):
        """CODI's targets come from a second teacher pass under no_grad, as the authors' code does: with other
        dropout masks in training; the same as the first one, detached, when nothing is random."""
        if not self.training or not any(m.p > 0 for m in self.modules() if isinstance(m, nn.Dropout)):
            return super().teacher_targets(t, states)
        with torch.no_grad():
            return self.gpt(t.ids, pos=t.pos, mask=t.mask, layers=True)[1]


def distillation(student, teacher):
    """Each row's distillation loss (B,), from the states of each layer at its position, (B, C) each: the mean over
    layers of SmoothL1 (mean over the width) divided by the layer's teacher standard deviation (over rows and width).
    Averaged over the rows, it is the authors' SmoothL1Loss()(student_l, teacher_l) / teacher_l.std(), averaged."""
    per_layer = [F.smooth_l1_loss(s.float(), t.float(), reduction="none").mean(-1) / t.float().std()
                 for s, t in zip(student, teacher)]
    return torch.stack(per_layer).mean(0)
