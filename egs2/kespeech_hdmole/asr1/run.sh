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
llm_conf=conf/llm_demo.yaml
demo_size=default
# decoding: 64 utterances a batch (the longest first, so of similar lengths) gave the hypotheses
# of 16 a batch for every utterance in 0.66x the time with the demo's small LLM; with a large LLM
# on a GPU, lower it to what its memory holds.
decode_args="--beam_size 4 --batch_size 64 --max_new_tokens 48"
ours=(--train_configs "$(echo $train_configs)" --llm_conf "$llm_conf" --demo_size "$demo_size" --decode_args "$decode_args")

for a in "$@"; do
    case $a in -h|--help)
        sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
        echo "run.sh runs ./hdmole.sh with these settings before yours (yours win):"
        printf '  %s "%s"\n' "${ours[@]}"
        echo "and, at --demo_size tiny, with short training: --max_epoch 2 in stage 4, 1 in stage 5, before"
        echo "your own --source_train_args / --train_args. The settings of ./hdmole.sh:"
        echo
        exec ./hdmole.sh --help ;;
    esac
done

# the tiny demo (CI) trains for a moment only: it checks the pipeline, not the method. Its short
# training goes in front of the user's own --source_train_args / --train_args, which then win.
# (option names as hdmole.sh reads them: --name value or --name=value, '-' for '_' allowed)
option() { local n=${1%%=*}; n=${n//-/_}; echo "${n#__}"; }
given_size=$demo_size prev=""
for a in "$@"; do
    [ "$prev" != demo_size ] || given_size=$a
    prev=$(option "$a")
    case $a in --*=*) [ "$prev" != demo_size ] || given_size=${a#*=}; prev="" ;; esac  # (its value is in it)
done
args=()
if [ "$given_size" = tiny ]; then
    source_short="--max_epoch 2"; train_short="--max_epoch 1"
    while [ $# -gt 0 ]; do
        name=$(option "$1")
        case $name in
            source_train_args|train_args)
                if [[ $1 == *=* ]]; then value=${1#*=}; shift
                elif [ $# -ge 2 ]; then value=$2; shift 2
                else echo "$0: option $1 needs a value" >&2; exit 2
                fi
                if [ "$name" = train_args ]; then train_short="--max_epoch 1 $value"; else source_short="--max_epoch 2 $value"; fi ;;
            *) args+=("$1"); shift ;;
        esac
    done
    args+=(--source_train_args "$source_short" --train_args "$train_short")
else
    args=("$@")
fi

./hdmole.sh "${ours[@]}" "${args[@]}"
