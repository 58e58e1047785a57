#!/usr/bin/env python3
"""What a trained system is: its trainable parameters (params.json) and, on a labelled set, its
accent-ID accuracy and, for HDMoLE/MoLE systems, the mean routing weight per accent and expert
of every adapted layer and the mean number of active experts (routing.json, train_stats.json).

    python -m espnet_hdmole.bin.model_info --exp exp/hdmole --model valid.acc.ave.pth \\
        --data dump/fbank/dev --accents data/accents.txt [--encoder_out exp/encoder_out/dev/encoder_out.scp]

The recipe runs it inside the training process, right after training (llm_asr_train
--model_info_args "--model ... --data ..."), which saves a second start of ESPnet per system.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from espnet_hdmole.errors import UserError


def get_parser():
    ap = argparse.ArgumentParser(prog="espnet_hdmole.bin.model_info", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True)
    ap.add_argument("--model", default="valid.acc.ave.pth")
    ap.add_argument("--data", required=True,
                    help="a dumped set with feats.scp (features) or wav.scp (raw audio, e.g. for Whisper), text, utt2accent")
    ap.add_argument("--accents", required=True)
    ap.add_argument("--encoder_out", default=None,
                    help="the set's stored encoder outputs (encoder_out.scp of dump_encoder_outputs): the encoder is skipped")
    ap.add_argument("--batch_size", type=int, default=16)
    return ap


def main(argv=None):
    a = get_parser().parse_args(argv)
    from espnet_hdmole import SPEECH, TEXT, hdmole_layers, hdmole_statistics
    from espnet_hdmole.asr.param_report import trainable_parameter_report
    from espnet_hdmole.tasks.llm_asr import LLMASRTask

    exp = Path(a.exp)
    model, args = LLMASRTask.build_model_from_file(exp / "config.yaml", exp / a.model)
    # as in training: ESPnet freezes --freeze_param before it creates the adapter, so adapter
    # parameters stay trainable
    from espnet_hdmole.asr.param_report import is_adapter_parameter

    for t in args.freeze_param or []:
        for k, p in model.named_parameters():
            if (k.startswith(t + ".") or k == t) and not is_adapter_parameter(k):
                p.requires_grad_(False)
    rep = trainable_parameter_report(model)
    (exp / "params.json").write_text(json.dumps(
        {"trainable": rep["trainable"], "reference": rep["reference"], "share": rep["share"],
         "touched": rep["touched"], "full_ft_trainable": None}, indent=1))
    print(rep["text"], file=sys.stderr)

    accents = [x.strip() for x in Path(a.accents).read_text(encoding="utf-8").splitlines() if x.strip()]
    data = Path(a.data)
    speech = next(((data / f, kind) for f, kind in (("feats.scp", "kaldi_ark"), ("wav.scp", "sound"))
                   if (data / f).is_file()), None)
    if speech is None:
        raise UserError(f"--data {data} has neither feats.scp nor wav.scp")
    loader = LLMASRTask.build_streaming_iterator(
        data_path_and_name_and_type=[(str(speech[0]), "speech", speech[1]),
                                     (str(data / "text"), "text", "text"),
                                     (str(data / "utt2accent"), "accent", "text")]
        + ([(a.encoder_out, "encoder_out", "kaldi_ark")] if a.encoder_out else []),
        dtype="float32", batch_size=a.batch_size, key_file=None, num_workers=0,
        preprocess_fn=LLMASRTask.build_preprocess_fn(args, False),
        collate_fn=LLMASRTask.build_collate_fn(args, False), allow_variable_data_keys=False, inference=False)
    layers = hdmole_layers(model)
    # per layer and position kind ("" all valid positions, "speech", "text"): the summed
    # per-utterance mean weights per accent, the number of utterances, the batch means of active experts
    kinds = {"": None, "speech": SPEECH, "text": TEXT}
    sums = {(n, k): np.zeros((len(model.accent_list), m.num_experts)) for n, m in layers for k in kinds}
    counts = {(n, k): np.zeros(len(model.accent_list)) for n, _ in layers for k in kinds}
    active = {(n, k): [] for n, _ in layers for k in kinds}
    n_utts = 0
    confusion = np.zeros((len(model.accent_list), len(model.accent_list)), dtype=np.int64)  # true x predicted
    model.eval()
    # without an accent head or HDMoLE layers there is nothing to measure on the set
    with torch.no_grad():
        for ids, batch in (loader if layers or model.accent_head is not None else ()):
            model(**batch, utt_id=ids)  # the encoder output is cached by id: predict_accent reuses it
            lab = batch["accent"].reshape(-1).numpy()
            b = len(lab)
            logits = model.predict_accent(batch["speech"], batch["speech_lengths"], utt_id=ids,
                                          encoder_out=batch.get("encoder_out"),
                                          encoder_out_lengths=batch.get("encoder_out_lengths"))
            if logits is not None:
                np.add.at(confusion, (lab, logits.argmax(-1).numpy()), 1)
            n_utts += b
            for k, kind in kinds.items():
                per = hdmole_statistics(model, per_layer=True, kind=kind)
                for n, m in layers:
                    w = m.utterance_routing_weights(kind).numpy()
                    if w.shape[0] != b:  # a layer fed several positions per utterance in another layout
                        continue
                    ok = ~np.isnan(w).any(axis=1)  # utterances with positions of this kind
                    np.add.at(sums[(n, k)], lab[ok], w[ok])
                    np.add.at(counts[(n, k)], lab[ok], 1)
                    if f"hdmole_active/{n}" in per:
                        active[(n, k)].append(float(per[f"hdmole_active/{n}"]))
    has_head = model.accent_head is not None and n_utts > 0
    info = {"accent_acc": float(np.trace(confusion)) / n_utts if has_head else None,
            "set": str(data), "utterances": n_utts}
    if layers:
        def mean_weight(n, k):
            return (sums[(n, k)] / np.maximum(counts[(n, k)], 1)[:, None]).round(5).tolist()

        def mean_active(n, k):
            return float(np.mean(active[(n, k)])) if active[(n, k)] else None

        # over valid positions only (padding left out); in the LLM also speech and text apart
        info["positions"] = "valid positions only (no padding); *_speech / *_text: speech or text positions"
        info["layers"] = {}
        for n, m in layers:
            L = {"accents": accents, "mean_weight": mean_weight(n, ""), "mean_active": mean_active(n, ""),
                 "num_domains": m.num_domains, "experts_per_domain": m.experts_per_domain,
                 "activation": m.activation, "global_router": m.global_router}
            for k in ("speech", "text"):
                if counts[(n, k)].sum() > 0:
                    L[f"mean_weight_{k}"], L[f"mean_active_{k}"] = mean_weight(n, k), mean_active(n, k)
            info["layers"][n] = L
        (exp / "routing.json").write_text(json.dumps(info, indent=1))
    stats = {"accent_acc": info["accent_acc"],
             "mean_active": {n: v["mean_active"] for n, v in info.get("layers", {}).items()}}
    if has_head:  # rows: the true accent of the dev set, columns: the predicted one
        stats["accent_confusion"] = {"accents": list(model.accent_list), "set": str(data),
                                     "counts": confusion.tolist()}
    (exp / "train_stats.json").write_text(json.dumps(stats, indent=1))
    print(f"{exp}: accent-ID accuracy {info['accent_acc']}, {len(layers)} adapted layers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from espnet_hdmole.errors import run_cli

    sys.exit(run_cli(main))
