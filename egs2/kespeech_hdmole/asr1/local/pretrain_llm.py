#!/usr/bin/env python3
"""Stage 3 (demo): a character tokenizer and a small Qwen2-style causal LM pre-trained on text.

    python local/pretrain_llm.py --train_text data/source_train/text data/train/text \\
        --valid_text data/source_dev/text --out_dir exp/llm --extra_chars "转写" [--config conf/llm_demo.yaml]

--config: a YAML of these options (``hidden_size: 256``, ...), e.g. hdmole.sh's --llm_conf; options
given on the command line win over it. A key that is no option of this script is an error.

Writes a normal `transformers` model directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) that `model_conf.llm_dir` can point at. Kaldi-style text files ('uid text')
and plain files (--plain_text, one sentence a line) are both accepted. The training sentences are
sorted before the seeded shuffle, so the model depends on the text and the seed only, not on
utterance ids or file order. Resumable: an interrupted
run continues from out_dir/.ckpt.pth; a finished one (out_dir/.done) is skipped.
"""
import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch


def read_sentences(kaldi_files, plain_files):
    """The transcripts of Kaldi-style text files (utterances without one are left out) and the
    lines of plain files, without spaces."""
    from espnet_hdmole.errors import UserError
    from espnet_hdmole.utils.kaldi_table import read_table

    out = []
    for f in kaldi_files or []:
        table = read_table(f, "transcript", allow_empty=True, error=UserError)
        out += [t.replace(" ", "") for t in table.values() if t]
    for f in plain_files or []:
        out += [x.strip().replace(" ", "") for x in Path(f).read_text(encoding="utf-8").splitlines() if x.strip()]
    return out


def batches(ids, batch_size, shuffle, rng):
    order = list(range(len(ids)))
    if shuffle:
        rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [ids[j] for j in order[i:i + batch_size]]


def collate(seqs, pad_id):
    n = max(len(s) for s in seqs)
    x = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    labels = x.masked_fill(mask == 0, -100)
    return x, mask, labels


def config_defaults(ap: argparse.ArgumentParser, path: str) -> None:
    """The options of the YAML ``path`` as ``ap``'s defaults; exits with one ERROR line naming the
    file and the key where a key is no option of ``ap``, or the file is no YAML mapping."""
    from merge_config import read_yaml  # (beside this script)

    conf = read_yaml(path)
    options = {a.dest: a for a in ap._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = sorted(set(conf) - set(options))
    if unknown:
        sys.exit(f"ERROR: {path}: {', '.join(map(repr, unknown))} is no option of local/pretrain_llm.py "
                 f"(its options: {', '.join(sorted(options))})")
    for key, value in conf.items():  # each value as the command line would give it (a YAML 4.0 is no int)
        kind = options[key].type
        if kind is not None and not isinstance(value, (list, dict)) and not (type(value) is kind):
            try:
                conf[key] = kind(str(value))
            except ValueError:
                sys.exit(f"ERROR: {path}: {key}: {value!r} is no {kind.__name__}")
    ap.set_defaults(**conf)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train_text", nargs="+", required=True, help="Kaldi-style text files to train on")
    ap.add_argument("--plain_text", nargs="*", default=[], help="extra plain-text files, one sentence a line")
    ap.add_argument("--valid_text", nargs="*", default=[], help="Kaldi-style text files for perplexity")
    ap.add_argument("--vocab_text", nargs="*", default=[], help="more Kaldi-style text whose characters join the vocabulary")
    ap.add_argument("--extra_chars", default="", help="characters the vocabulary must hold (e.g. of the prompts)")
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--hidden_size", type=int, default=256)
    ap.add_argument("--num_layers", type=int, default=4)
    ap.add_argument("--num_heads", type=int, default=4)
    ap.add_argument("--num_kv_heads", type=int, default=2)
    ap.add_argument("--intermediate_size", type=int, default=0, help="default: 3 x hidden")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--config", default=None, help="a YAML of these options (see above)")
    known, _ = ap.parse_known_args(argv)
    if known.config:
        config_defaults(ap, known.config)
    a = ap.parse_args(argv)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from espnet_hdmole.asr.llm_utils import build_char_tokenizer

    out = Path(a.out_dir)
    if (out / ".done").exists():
        print(f"{out}: LLM already pre-trained, skipped (remove {out}/.done to redo)", file=sys.stderr)
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    # sorted: the seeded shuffle then draws the same batches whatever the utterance ids or the
    # order of the files (utterance ids alone moved the demo's source model by several CER points)
    train = sorted(read_sentences(a.train_text, a.plain_text))
    valid = read_sentences(a.valid_text, [])
    if not train:
        print("ERROR: no training sentences in " + " ".join(a.train_text + a.plain_text), file=sys.stderr)
        return 1
    chars = set("".join(train)) | set("".join(read_sentences(a.vocab_text, []))) | set(a.extra_chars)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_char_tokenizer(sorted(chars), out)
    eos = tok.eos_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] + [eos]  # noqa: E731
    train_ids, valid_ids = [enc(s) for s in train], [enc(s) for s in valid]
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=a.hidden_size, intermediate_size=a.intermediate_size or 3 * a.hidden_size,
        num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=eos, pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_ids) / a.batch_size)
    total = steps_per_epoch * a.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * max(0.05, 1 - s / max(1, total)))
    start = 1
    ckpt = out / ".ckpt.pth"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start = st["epoch"] + 1
        rng.setstate(st["rng"])
        print(f"resuming from epoch {st['epoch']}", file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"LLM: {n_params:,} parameters, vocabulary {len(tok)}, {len(train_ids)} training sentences, "
          f"{a.epochs} epochs", file=sys.stderr)

    def evaluate():
        if not valid_ids:
            return float("nan")
        model.eval()
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for b in batches(valid_ids, a.batch_size, False, rng):
                x, m, y = collate(b, tok.pad_token_id)
                loss = model(input_ids=x, attention_mask=m, labels=y).loss
                n = int((y[:, 1:] != -100).sum())
                tot, cnt = tot + float(loss) * n, cnt + n
        model.train()
        return math.exp(tot / max(cnt, 1))

    model.train()
    for epoch in range(start, a.epochs + 1):
        t0, tot, n = time.time(), 0.0, 0
        for b in batches(train_ids, a.batch_size, True, rng):
            x, m, y = collate(b, tok.pad_token_id)
            loss = model(input_ids=x, attention_mask=m, labels=y).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot, n = tot + loss.item(), n + 1
        ppl = evaluate()
        print(f"epoch {epoch}/{a.epochs}: train loss {tot / n:.3f}, valid perplexity {ppl:.2f}, "
              f"{time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch, "rng": rng.getstate()}, ckpt)
    model.save_pretrained(str(out))
    (out / "pretrain.json").write_text(json.dumps({"parameters": n_params, "vocab": len(tok),
                                                   "sentences": len(train_ids), "valid_perplexity": evaluate(),
                                                   "args": vars(a)}, indent=1, ensure_ascii=False))
    ckpt.unlink()
    (out / ".done").write_text("done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
