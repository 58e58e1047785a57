"""The stage-5 fine-tuning systems of egs2/kespeech_hdmole/asr1 as benchmarks/bench_llm_asr.py
builds them: each system's merged training config (``system_spec``), a Qwen2 causal LM of
conf/tuning/llm_demo.yaml's shape with random weights and a character tokenizer (``make_llm``),
the model as the ESPnet trainer has it (``build``: built, --freeze_param applied, adapter
created), a fixed CTC path for the untrained CTC head (``synthetic_ctc_path``) and random
batches as the collate function gives them (``make_batches``). ``PRESETS`` are the sizes
(see bench_llm_asr.py --help). Nothing is downloaded.
"""
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONF = ROOT / "egs2" / "kespeech_hdmole" / "asr1" / "conf" / "tuning"
SYSTEM_YAML = {"full_ft": "finetune_full.yaml", "lora": "finetune_lora.yaml",
               "hdmole": "finetune_hdmole.yaml", "mole_topk": "finetune_mole_topk.yaml",
               "hdmole_no_routing": "finetune_hdmole.yaml", "hdmole_native": "finetune_hdmole.yaml"}
# timing controls: a system built as its YAML says, then changed (routing_free_control.py,
# native_group_control.py)
CONTROLS = {"hdmole_no_routing": "routing_free", "hdmole_native": "native_group"}

PRESETS = {
    # checks that the script runs (seconds)
    "tiny": dict(enc_dim=32, enc_heads=4, enc_units=64, enc_blocks=1, input_layer="conv2d6",
                 proj_hidden=32, llm_hidden=32, llm_layers=2, vocab=60, batch=4, frames=60, text_len=6,
                 decode_utts=4, decode_batch=4),
    # egs2/kespeech_hdmole/asr1 stage 5: train_source.yaml + llm_demo.yaml, batch_size 16
    "demo": dict(enc_dim=144, enc_heads=4, enc_units=576, enc_blocks=4, input_layer="conv2d6",
                 proj_hidden=256, llm_hidden=256, llm_layers=4, vocab=3000, batch=16, frames=350, text_len=14,
                 decode_utts=64, decode_batch=64),  # run.sh decodes 64 utterances a batch
    # the demo with an LLM of Qwen2-0.5B's width (hidden 896, intermediate 4864, 14 heads / 2 KV
    # heads), 4 layers: where the LLM's weights, not per-layer overheads, dominate the step
    "wide": dict(enc_dim=144, enc_heads=4, enc_units=576, enc_blocks=4, input_layer="conv2d6",
                 proj_hidden=896, llm_hidden=896, llm_layers=4, vocab=3000, batch=16, frames=350, text_len=14,
                 decode_utts=16, decode_batch=16, llm_intermediate=4864, llm_heads=14, llm_kv_heads=2),
}


def load_yaml(name):
    import yaml

    return yaml.safe_load((RECIPE_CONF / name).read_text(encoding="utf-8")) or {}


def system_spec(system, domains=None, experts=None, lora_rank=None):
    """The merged training config of a system (local/merge_config.py), optionally resized."""
    local = str(RECIPE_CONF.parents[1] / "local")
    if local not in sys.path:  # (the sweep asks for a dozen specs)
        sys.path.insert(0, local)
    from merge_config import merge

    conf = copy.deepcopy(merge(load_yaml("train_source.yaml"), load_yaml(SYSTEM_YAML[system])))
    ac = dict(conf.get("adapter_conf") or {})
    if domains is not None and conf.get("adapter") == "hdmole":
        ac.update(num_domains=domains, experts_per_domain=experts)
        if domains < 2:  # an accent head needs two domains; with one, the global posterior is 1
            ac.update(global_router="none", keep_trainable=[])
            conf["model_conf"].pop("aid_weight", None)
            conf["model_conf"]["use_accent_head"] = False
    if lora_rank is not None and conf.get("adapter") == "lora":
        ac.update(rank=lora_rank, alpha=int(round(lora_rank * ac["alpha"] / ac["rank"])))
    conf["adapter_conf"] = ac
    if system in CONTROLS:
        conf["bench_control"] = CONTROLS[system]
    n_dom = ac.get("num_domains", 9) if conf.get("adapter") == "hdmole" else (domains or 9)
    conf["accent_list"] = [f"accent{i}" for i in range(n_dom)]
    return conf


def make_llm(path, cfg):
    """A Qwen2 causal LM as local/pretrain_llm.py builds it (llm_demo.yaml's heads), random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from espnet_hdmole.asr.llm_utils import build_char_tokenizer

    llm_conf = load_yaml("llm_demo.yaml")
    prompt = str(load_yaml("train_source.yaml").get("model_conf", {}).get("prompt", ""))
    cjk = (chr(c) for c in range(0x4E00, 0x9FA6) if chr(c) not in prompt)
    chars = "".join(sorted(set(prompt))) + "".join(next(cjk) for _ in range(cfg["vocab"] - 3 - len(set(prompt))))
    tok = build_char_tokenizer(chars, path)
    h = cfg["llm_hidden"]
    c = Qwen2Config(vocab_size=len(tok), hidden_size=h, intermediate_size=cfg.get("llm_intermediate", 3 * h),
                    num_hidden_layers=cfg["llm_layers"],
                    num_attention_heads=cfg.get("llm_heads", llm_conf.get("num_heads", 4)),
                    num_key_value_heads=cfg.get("llm_kv_heads", llm_conf.get("num_kv_heads", 2)),
                    max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(c).save_pretrained(str(path))
    return str(path), len(tok)


def build(cfg, spec, workdir):
    """The model as the ESPnet trainer has it: built, --freeze_param applied, adapter created."""
    import numpy as np
    from espnet2.layers.create_adapter import create_adapter

    from espnet_hdmole.asr.param_report import trainable_parameter_report
    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    llm_dir, vocab = make_llm(Path(workdir) / "llm", cfg)
    stats = Path(workdir) / "cmvn_stats.npz"
    np.savez(stats, count=np.array(1000.0), sum=np.zeros(80), sum_square=np.full(80, 1000.0))
    args = LLMASRTask.get_parser().parse_args(["--input_size", "80"])
    args.normalize, args.normalize_conf = "global_mvn", {"stats_file": str(stats)}
    args.encoder = spec["encoder"]
    args.encoder_conf = dict(spec["encoder_conf"], output_size=cfg["enc_dim"], attention_heads=cfg["enc_heads"],
                             linear_units=cfg["enc_units"], num_blocks=cfg["enc_blocks"], input_layer=cfg["input_layer"])
    mc = dict(spec["model_conf"], llm_dir=llm_dir, accent_list=spec["accent_list"])
    mc["projector_conf"] = dict(mc.get("projector_conf") or {}, hidden_size=cfg["proj_hidden"])
    args.model_conf = mc
    model = LLMASRTask.build_model(args)
    if model.ctc_compress != "none":
        model.ctc.argmax = synthetic_ctc_path
    for t in spec.get("freeze_param") or []:
        for k, p in model.named_parameters():
            if k.startswith(t + ".") or k == t:
                p.requires_grad_(False)
    if spec.get("adapter"):
        create_adapter(model, spec["adapter"], dict(spec["adapter_conf"]))
    if spec.get("bench_control") == "routing_free":
        import routing_free_control

        routing_free_control.install(model)
    elif spec.get("bench_control") == "native_group":
        import native_group_control

        native_group_control.install(model)
    return model, trainable_parameter_report(model), vocab


def synthetic_ctc_path(h):
    """(B, T) greedy CTC labels: one syllable (blank, initial, final, final) per 4 frames."""
    from espnet_hdmole.asr.pinyin_units import PinyinUnits

    n_ini, n_units = len(PinyinUnits.initials()), len(PinyinUnits())
    t = torch.arange(h.shape[1])
    syl, pos = t // 4, t % 4
    ini = 1 + syl % n_ini
    fin = n_ini + 1 + syl % (n_units - n_ini - 1)
    path = torch.where(pos == 0, torch.zeros_like(t), torch.where(pos == 1, ini, fin))
    return path.unsqueeze(0).expand(h.shape[0], -1).to(h.device)


def make_batches(cfg, n_batches, batch, n_domains, vocab, seed, prefix):
    """Batches as the collate function gives them (padded, lengths, accent indices) + utt ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for j in range(n_batches):
        lo, hi = int(cfg["frames"] * 0.9), int(cfg["frames"] * 1.1)
        lens = torch.randint(lo, hi + 1, (batch,), generator=g).sort(descending=True).values  # batch_type sorted
        speech = torch.randn(batch, int(lens.max()), 80, generator=g)
        for i, n in enumerate(lens.tolist()):
            speech[i, n:] = 0.0
        tl = torch.randint(max(1, cfg["text_len"] - 2), cfg["text_len"] + 3, (batch,), generator=g)
        text = torch.randint(3, vocab, (batch, int(tl.max())), generator=g)
        for i, n in enumerate(tl.tolist()):
            text[i, n:] = -1
        acc = torch.randint(0, n_domains, (batch, 1), generator=g)
        ids = [f"{prefix}{j:03d}_{i:02d}" for i in range(batch)]
        out.append((ids, dict(speech=speech, speech_lengths=lens, text=text, text_lengths=tl, accent=acc)))
    return out
