"""
LoRA (Hu et al. 2021, arXiv:2106.09685), as CODI and PCCoT train GPT-2 with it (the peft library's LoraConfig:
r 128, alpha 32, dropout 0.1 on c_attn, c_proj and c_fc). Each adapted linear layer keeps its frozen weight W and
adds a trainable low-rank update: y = W x + b + (alpha / r) B A dropout(x), with A (r, in) drawn as peft draws it
(Kaiming-uniform, a = sqrt(5)) and B (out, r) zero, so that training starts from the model itself.

The adapters live beside the GPT, in a ModuleDict that a method model holds (Coconut.save writes them with what
else it adds), and act through forward hooks: the GPT, its state dict and its checkpoints stay those of a plain
GPT. Every other weight is frozen, but for the embedding rows of the tokens given (PCCoT trains <bot>, <eot>,
<latent> and EOS: peft's trainable_token_indices), whose gradient alone is kept.
"""
import math

import torch
import torch.nn as nn

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # peft's c_attn, c_proj, c_fc on GPT-2


class LoRA(nn.Module):
    """The low-rank update of one linear layer: (alpha / r) B A dropout(x)."""

    def __init__(self, linear, r, alpha, dropout):
        super().__init__()
        self.A = nn.Parameter(torch.empty(r, linear.in_features, device=linear.weight.device))
        self.B = nn.Parameter(torch.zeros(linear.out_features, r, device=linear.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout, self.scale = nn.Dropout(dropout), alpha / r

    def forward(self, x):
        return self.dropout(x) @ self.A.t() @ self.B.t() * self.scale


def add_lora(gpt, r, alpha, dropout, token_rows=()):
    """Freeze the GPT and hook a LoRA into each target layer of each block; returns the adapters (a ModuleDict).
    token_rows: token ids whose embedding rows stay trainable (the rest of the embedding is frozen)."""
    for p in gpt.parameters():
        p.requires_grad_(False)
    adapters = nn.ModuleDict()
    for i, block in enumerate(gpt.transformer.h):
        for target in TARGETS:
            linear = block.get_submodule(target)
            adapter = adapters[f"h{i}_{target.replace('.', '_')}"] = LoRA(linear, r, alpha, dropout)
            linear.register_forward_hook(lambda module, inputs, out, adapter=adapter: out + adapter(inputs[0]))
    if token_rows:
        wte = gpt.transformer.wte.weight
        keep = torch.zeros(wte.shape[0], 1, device=wte.device, dtype=wte.dtype)
        keep[gpt.rows(torch.tensor(list(token_rows), device=wte.device))] = 1.0
        wte.requires_grad_(True)
        wte.register_hook(lambda grad: grad * keep)
        wte.rows_only = True  # make_optimizer: no weight decay on it, which would reach the frozen rows too
    return adapters
