#!/usr/bin/env bash
# The experiment: pre-train on standard Mandarin, fine-tune every system of conf/tuning on the
# nine accent domains, decode and score.   ./run.sh [--stage N] [--stop_stage M] [--name value ...]
# Without $KESPEECH (db.sh) it makes the offline demo corpus. See ./hdmole.sh --help for every setting.
set -euo pipefail
cd "$(dirname "$0")"

train_configs="conf/finetune_full.yaml conf/finetune_lora.yaml conf/finetune_mole_topk.yaml
  conf/finetune_mole_dense.yaml conf/finetune_hdmole.yaml conf/finetune_hdmole_nohier.yaml
  conf/finetune_hdmole_topk.yaml conf/finetune_hdmole_oracle.yaml
  conf/finetune_full_proj.yaml conf/finetune_lora_proj.yaml conf/finetune_hdmole_proj.yaml"

# decoding: 64 utterances a batch (the longest first, so of similar lengths) gave the hypotheses
# of 16 a batch for every utterance in 0.66x the time with the demo's small LLM; with a large LLM
# on a GPU, lower it to what its memory holds.
# the tiny demo (CI) trains for a moment only: it checks the pipeline, not the method
extra=()
for a in "$@"; do [ "$a" = tiny ] && extra=(--source_train_args "--max_epoch 2" --train_args "--max_epoch 1"); done

./hdmole.sh \
    --train_configs "$(echo $train_configs)" \
    --llm_conf conf/llm_demo.yaml \
    --demo_size default \
    --decode_args "--beam_size 4 --batch_size 64 --max_new_tokens 48" \
    "${extra[@]}" "$@"
