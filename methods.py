"""
Every method of this project as a model: the GPT of a run wrapped as its method computes (coconut.py's Coconut and
its baselines; codi.py, pccot.py, simcot.py; LoRA's adapters), for training (train.py) and for evaluation (eval.py).
"""
from codi import CODI
from coconut import Coconut
from data import BOT, EOS, EOT, LATENT, METHODS
from gpt import GPT
from lora import add_lora
from pccot import PCCoT
from simcot import SimCoT, without_latent_tokens


def build_model(cfg, gpt, path=None, training=False):
    """The model of a run's method around its GPT (on its device); path: a checkpoint holding what the method adds
    to the GPT (CODI's projection, SIM-CoT's step decoder). SIM-CoT's decoder serves in training only: evaluated,
    SIM-CoT is Coconut."""
    method = cfg["method"]
    if method == "codi":
        model = CODI(gpt)
    elif method == "pccot":
        model = PCCoT(gpt, cfg["pccot_iterations"])
    elif method == "simcot" and training:
        model = SimCoT(gpt, step_decoder(cfg, gpt))
    else:
        model = Coconut(gpt, feedback=METHODS[method].feedback)
    if cfg.get("lora_r"):  # CODI's and PCCoT's recipes: the GPT frozen, low-rank adapters trained (lora.py)
        rows = (BOT, EOT, LATENT, EOS) if cfg["lora_token_rows"] else ()
        model.lora = add_lora(gpt, cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], rows)
    model.to(gpt.transformer.wte.weight.device)
    if path is not None:
        model.load_extras(path)
    return model


def step_decoder(cfg, gpt):
    """SIM-CoT's step decoder as a run starts: a GPT-2 (step_decoder_init), or else a copy of the model as it starts."""
    return without_latent_tokens(GPT.from_pretrained(cfg["step_decoder_init"]) if cfg.get("step_decoder_init") else gpt)

