"""
GPT-2, computing exactly what Hugging Face's GPT2LMHeadModel computes, in one file.

Coconut asks three things of the language model beyond a plain forward pass:
  - inputs given as embeddings, so that a hidden state can stand where a token embedding would
    (`forward(embeds=...)`, `embed`);
  - the final hidden states, after ln_f, apart from the LM head (`forward` returns them, `logits` is the
    head), so that the head only runs where a loss or a next token needs it;
  - a KV cache, so that each continuous thought costs one position instead of a pass over the prefix.

Load the real weights (downloaded once from the Hugging Face Hub into its usual cache), or a local
Hugging Face GPT-2 directory:

    model = GPT.from_pretrained("gpt2")           # or gpt2-medium, gpt2-large, gpt2-xl, or a directory
    h = model(idx)                                # (B, T, C) final hidden states
    logits = model.logits(h[:, -1])               # (B, vocab_size), only where needed
"""
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024   # longest sequence: the number of learned positions
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1     # GPT-2's embedding, attention and residual dropout
    tokens: list = None      # a vocabulary of its own: row i of the embedding is token id tokens[i] (None: id i)


# The four GPT-2 checkpoints, all on the Hugging Face Hub as openai-community/<name>.
SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),          # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),   # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),      # 1558M
}

# Dense bf16 peak FLOP/s of common GPUs, the denominator of MFU.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


class KVCache:
    """Keys and values of every layer for a batch, preallocated to `max_len` columns.

    Column j of the cache holds column j of the (padded) batch. A forward pass writes its keys and values
    at the columns `input_pos` and attends to every column up to its own; `valid` marks the columns that
    hold real tokens rather than padding. Shapes never change, so a compiled one-token step compiles once.
    Rewinding is writing again from an earlier column: later columns stay hidden by the causal mask.
    """

    def __init__(self, config, batch_size, max_len, device=None, dtype=None):
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        # Per layer, its (keys, values), each (B, nh, L, hd).
        self.layers = [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                       for _ in range(config.n_layer)]
        self.valid = torch.zeros(batch_size, max_len, device=device, dtype=torch.bool)  # (B, L)
        # Fixed addresses let CUDA graphs (torch.compile's "reduce-overhead") update the cache in place. A cache
        # made inside a compiled training step is part of that step's graph instead, written out of place.
        if not torch.compiler.is_compiling():
            for t in [t for kv in self.layers for t in kv] + [self.valid]:
                torch._dynamo.mark_static_address(t)


def write(t, dim, index, values):
    """t with `values` at `index` along `dim`: in place, so that addresses stay fixed for CUDA graphs, unless
    autograd is recording; then out of place, since every earlier pass keeps what it read for its backward."""
    return t.index_copy(dim, index, values) if torch.is_grad_enabled() else t.index_copy_(dim, index, values)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x, attn_mask, kv=None, input_pos=None):
        """With kv, this layer's cached (keys, values): write this block's at columns input_pos, attend to all."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if kv is not None:
            kv = k, v = write(kv[0], 2, input_pos, k), write(kv[1], 2, input_pos, v)  # (B, nh, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), kv


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's "gelu_new"


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, kv=None, input_pos=None):
        a, kv = self.attn(self.ln_1(x), attn_mask, kv, input_pos)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5),
        ))
        if config.tokens is not None:
            # A model trained from scratch needs rows only for the tokens its data uses: the LM head then costs
            # a few dozen rows instead of 50,260 for each supervised token. Ids stay GPT-2's outside the model.
            ids = torch.tensor(config.tokens)
            rows = torch.full((int(ids.max()) + 1,), -1).index_copy(0, ids, torch.arange(len(ids)))
            self.register_buffer("row_ids", ids, persistent=False)  # (V,) the token id of each row
            self.register_buffer("id_rows", rows, persistent=False)  # (max id + 1,) the row of each id, -1: none
        self.apply(self._init_weights)
        # GPT-2 scales the projections into the residual stream by 1/sqrt(2 n_layer): they add up over 2 n_layer sublayers.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        """GPT-2's initialisation, for models trained from scratch (from_pretrained overwrites it)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx=None, embeds=None, pos=None, mask=None, cache=None, input_pos=None, layers=False):
        """Final hidden states (B, T, C), after ln_f, of tokens idx (B, T) or of input embeddings (B, T, C).

        pos: (B, T) position ids; by default each token's column.
        mask: (B, T) True for real tokens, False for padding; by default all real.
        cache, input_pos: write this block's keys and values at cache columns input_pos (T,) and attend
        to the whole cache up to each query's column.
        layers: also return the hidden states of every layer, as transformers' output_hidden_states gives them
        (n_layer + 1 of (B, T, C): the embeddings, each block's output but the last, then ln_f's output).
        """
        x = self.embed(idx) if embeds is None else embeds
        B, T, _ = x.shape
        if pos is None:
            pos = (input_pos if cache is not None else torch.arange(T, device=x.device)).expand(B, T)
        x = self.transformer.drop(x + self.transformer.wpe(pos))
        attn_mask = self._attention_mask(mask, cache, input_pos, B, T, x.device)
        states = []
        for layer, block in enumerate(self.transformer.h):
            states.append(x)
            x, kv = block(x, attn_mask, cache.layers[layer] if cache is not None else None, input_pos)
            if cache is not None:
                cache.layers[layer] = kv
        h = self.transformer.ln_f(x)
        return (h, states + [h]) if layers else h

    def _attention_mask(self, mask, cache, input_pos, B, T, device):
        """(B, 1, T, L) bool: query t sees key j iff j is not after t and is a real token; None: plain causal."""
        if cache is None:
            if mask is None:
                return None  # lets SDPA use its fastest causal kernels
            valid, q_col = mask, torch.arange(T, device=device)
        else:
            new_valid = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
            cache.valid = write(cache.valid, 1, input_pos, new_valid)
            valid, q_col = cache.valid, input_pos
        k_col = torch.arange(valid.size(1), device=device)
        causal = k_col <= q_col[:, None]  # (T, L)
        # A padding query may have no real key at all, and a softmax over nothing is NaN. Letting every query
        # see itself keeps it finite; real tokens see themselves anyway, so their results do not change.
        itself = k_col == q_col[:, None]
        return (causal & (valid[:, None, :] | itself))[:, None]

    def embed(self, ids):
        """Token ids (...) -> their embeddings (..., C)."""
        return self.transformer.wte(self.rows(ids))

    def logits(self, h):
        """The LM head, tied to the token embedding: (..., C) -> (..., vocab_size), one score for each row."""
        return F.linear(h, self.transformer.wte.weight)

    def rows(self, ids):
        """Token ids -> rows of the embedding and the logits (the same but for a vocabulary of its own)."""
        return ids if self.config.tokens is None else self.id_rows[ids]

    def ids(self, rows):
        """Rows of the embedding and the logits -> token ids."""
        return rows if self.config.tokens is None else self.row_ids[rows]

    def unknown(self, ids):
        """The ids among `ids` that this model has no row for (none for a model of the whole vocabulary)."""
        if self.config.tokens is None:
            return [i for i in set(ids) if not 0 <= i < self.config.vocab_size]
        return sorted(set(ids) - set(self.config.tokens))

    def grow_vocab(self, vocab_size, init_row=None):
        """Add rows to the tied embedding, each a copy of row `init_row`, or the mean of the old rows if None."""
        old = self.transformer.wte.weight.data
        new_rows = (old[init_row] if init_row is not None else old.mean(dim=0)).expand(vocab_size - len(old), -1)
        self.transformer.wte.weight = nn.Parameter(torch.cat([old, new_rows]))
        self.config.vocab_size = vocab_size

    def flops_per_token(self, seq_len):
        """Training (forward + backward) FLOPs per token: 6 per weight, plus attention (PaLM, appendix B)."""
        n_params = sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()
        cfg = self.config
        return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def mfu(self, tokens_per_second, seq_len, device):
        """Model FLOPs utilisation: training FLOPs per second over the GPU's dense bf16 peak (None if unknown)."""
        name = torch.cuda.get_device_name(device)
        peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in name), None)
        return self.flops_per_token(seq_len) * tokens_per_second / peak if peak else None

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.1):
        """GPT-2 by name (downloaded through huggingface_hub), from a Hugging Face GPT-2 directory, or from a
        directory written by `save` (a checkpoint of this project)."""
        path = Path(name_or_dir)
        if (path / "model.json").is_file():
            return cls.load(path, dropout)
        if path.is_dir():
            config, weights_file = _read_hf_dir(path)
        elif name_or_dir in SIZES:
            config, weights_file = GPTConfig(**SIZES[name_or_dir]), _download(name_or_dir)
        else:
            raise ValueError(f"unknown GPT-2 '{name_or_dir}': expected one of {', '.join(SIZES)}, or a directory "
                             "holding config.json and model.safetensors or pytorch_model.bin")
        config.dropout = dropout
        model = cls(config)
        model.load_hf_state_dict(_read_weights(weights_file), source=weights_file)
        return model

    def save(self, path):
        """Write model.json (the config) and model.safetensors into the directory `path`."""
        from safetensors.torch import save_file
        (Path(path) / "model.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, Path(path) / "model.safetensors")

    @classmethod
    def load(cls, path, dropout=None):
        """The model `save` wrote; dropout overrides the saved one."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = Path(path)
        try:
            config = GPTConfig(**json.loads((path / "model.json").read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path / 'model.json'}: not a readable checkpoint file ({e})") from e
        try:
            state = load_file(path / "model.safetensors")
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{path / 'model.safetensors'}: not a readable checkpoint file ({e})") from e
        config.dropout = config.dropout if dropout is None else dropout
        model = cls(config)
        model.load_state_dict_checked(state, source=path / "model.safetensors")
        return model

    def load_state_dict_checked(self, state, source):
        """load_state_dict with one clear error naming the file, the key and the shapes."""
        ours = self.state_dict()
        if set(state) != set(ours):
            missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
            raise ValueError(f"{source}: not a GPT-2 state dict for this config: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        for k, v in state.items():
            if v.shape != ours[k].shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, but the config asks for "
                                 f"{tuple(ours[k].shape)}")
        self.load_state_dict(state)

    def load_hf_state_dict(self, hf, source):
        """Load a GPT2LMHeadModel state dict: drop what GPT-2 ties or derives, transpose its Conv1D weights."""
        conv1d = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
        state = {f"transformer.{k.removeprefix('transformer.')}": v.t() if k.endswith(conv1d) else v
                 for k, v in hf.items()  # Conv1D stores (in, out); nn.Linear wants (out, in)
                 if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"}
        self.load_state_dict_checked(state, source)


def _read_hf_dir(path):
    """GPTConfig and the weights file of a Hugging Face GPT-2 directory (config.json + weights)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: neither a checkpoint of this project (model.json and model.safetensors) "
                                "nor a GPT-2 directory (config.json and model.safetensors or pytorch_model.bin)")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type", "gpt2") != "gpt2" or hf.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"{config_file}: not a GPT-2 config (model_type {hf.get('model_type')!r}, "
                         f"activation {hf.get('activation_function')!r})")
    config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                       n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"])
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return config, path / name
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def _download(name):
    """The safetensors file of openai-community/<name>, through the Hub's cache (HF_HUB_OFFLINE, HF_ENDPOINT)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        return Path(hf_hub_download(f"openai-community/{name}", "model.safetensors"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise FileNotFoundError(f"could not get GPT-2 '{name}' from the Hugging Face Hub and it is not in the "
                                f"local cache ({type(e).__name__}); connect once, or pass a local directory") from e


def _read_weights(path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
