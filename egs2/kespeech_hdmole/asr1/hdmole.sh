#!/usr/bin/env bash
# HDMoLE recipe: multi-accent adaptation of an LLM-based ASR model, in six stages.
#
#   1. data       Kaldi-style dirs: from KeSpeech (--kespeech) or the offline demo corpus
#   2. features   80-dim fbank + 3 pitch features into dump/fbank_pitch (or fbank, raw), global CMVN, shapes
#   3. LLM        character tokenizer + small Qwen2-style LM pre-trained on the training text,
#                 or a user's model directory (--llm_dir); an n-gram LM over its tokens for decoding
#   4. source     source-domain (standard Mandarin) pre-training: the encoder with CTC (toneless, then
#                 toned); its outputs once per set; projector + LLM on it, frozen, and beside that the
#                 accent-ID head (local/recipe_source_model.sh)
#   5. fine-tune  one multi-accent fine-tuning run per YAML in --train_configs -> exp/<system>
#   6. decode     every test set and the source test set (beam search with the n-gram LM fused),
#                 CER scoring, exp/*/RESULTS.md + plots
#
# Re-running skips what is done. Each output records the inputs it was made from (config content,
# checkpoint and data hashes, options) in its .done marker: a stage whose inputs changed is redone,
# and the log says why; a superseded training run is kept beside it as <dir>.stale-<time>.
# One run at a time per --exp_dir (a lock); user errors are one ERROR line (--verbose true: all).
#
# Usage: ./hdmole.sh [--name value ...]     (every setting below can be given as --name value)
set -euo pipefail

# ---------------------------------------------------------------- settings (defaults)
stage=1                 # first stage to run
stop_stage=6            # last stage to run
nj=2                    # parallel jobs for data and features
seed=0                  # random seed of the demo corpus and of training
train_seeds=""          # more fine-tuning seeds for every stage-5 system, e.g. "1 2": each system also runs
                        # with each into exp/<system>_seed<k> (stage 6 decodes them; RESULTS.md gives the
                        # mean and spread over --seed and these); "": --seed only
demo_size=default       # demo corpus size: tiny (CI) | small | default
kespeech=""             # KeSpeech root (default: $KESPEECH from db.sh); empty: the demo corpus
source_dir=""           # Kaldi-style standard-Mandarin dir for the source test set (KeSpeech only)
data_dir=data           # stage 1 output
data_args=""            # extra options for stage 1's tool (local/prepare_kespeech.py, or local/make_demo_corpus.py
                        # for the demo), e.g. "--check_audio false" or "--max_vocab 1000": the options its messages name
dump_dir=dump           # stage 2 output
feats_type=fbank_pitch  # fbank_pitch (80 fbank + 3 pitch) | fbank (80-dim) | raw (waveforms, for whisper)
whisper_dir=""          # a Whisper model dir (config.json + weights; bash tools/install_whisper.sh base -> tools/whisper-base):
                        # its frozen encoder instead of the conformer of stage 4's steps 1/1b (skipped), adapters in
                        # the projector and LLM only; sets --feats_type raw and --source_config conf/train_source_whisper.yaml
exp_dir=exp             # stages 3-6 output
llm_dir=""              # a transformers causal LM + tokenizer dir; empty: pre-train one (stage 3)
llm_conf=conf/llm_demo.yaml       # stage 3 settings (local/pretrain_llm.py options, as YAML)
pretrained_model=""     # a source-domain model (.pth; its config.yaml beside it): skips stage 4
source_config=conf/train_source.yaml   # stage 4 training config of the source model
source_encoder_config=conf/train_source_encoder.yaml   # stage 4 step 1: encoder pre-training (CTC),
                        # overrides on source_config; "" trains the source model in one step
source_tone_config=conf/train_source_encoder_tone.yaml   # stage 4 step 1b: the CTC continued over toned
                        # units from step 1's encoder (overrides on step 1's config); "": none
accent_id_config=conf/train_accent_id.yaml   # stage 4 step 3: the accent-ID head (global router) trained
                        # alone on the accent training set, then frozen in the systems that use it; "": none
aid_source_utts=300     # stage 4 step 3: utterances of source_train (at most; spread over its speakers) that join
                        # the accent-ID head's training set as standard Mandarin; 0: none
aid_model=""            # the accent-ID head stage 5's systems start from (default: step 3's,
                        # $exp_dir/accent_id/valid.acc_aid.ave.pth: the average of its best epochs), e.g. for runs in another --exp_dir
train_configs="conf/finetune_full.yaml conf/finetune_lora.yaml conf/finetune_mole_topk.yaml conf/finetune_mole_dense.yaml conf/finetune_hdmole.yaml conf/finetune_hdmole_nohier.yaml conf/finetune_hdmole_topk.yaml conf/finetune_hdmole_oracle.yaml conf/finetune_full_proj.yaml conf/finetune_lora_proj.yaml conf/finetune_hdmole_proj.yaml"
train_args=""           # extra options for every llm_asr_train run, e.g. "--ngpu 1"
source_train_args=""    # extra options for stage 4 only, e.g. "--max_epoch 20"
ngpu=0                  # GPUs per training job (ESPnet's --ngpu; >1 uses its distributed training)
train_launcher=""       # put before the training module, e.g. "-m torch.distributed.run --standalone --nproc_per_node 2"
                        # (torch's launcher; ESPnet reads its env:// ranks; on CPU add --train_args "--dist_backend gloo")
ngram_order=4           # stage 3: order of the n-gram LM over the LLM's tokens (local/train_ngram_lm.py; the training
                        # transcripts plus --ngram_text) that stage 6 fuses into the search; 0: none
ngram_text=""           # extra text for the n-gram LM, one sentence a line (default: $data_dir/ngram_text where it
                        # exists: the demo writes clauses of its text source that no set records)
ngram_lm=""             # an ARPA n-gram LM over the LLM's tokens for stage 6 (e.g. of another --exp_dir, or KenLM's
                        # over the same tokens); default: the one stage 3 makes, $exp_dir/ngram/lm.arpa
ngram_weight=0.5        # stage 6: weight of the n-gram LM's log-probabilities in the beam search (shallow fusion);
                        # 0: none. Chosen on dev (beam 4, 4-gram): source model on source_dev, CER 14.3% (0),
                        # 10.2 (0.3), 9.7 (0.5), 9.8 (0.7); on dev hdmole 38.3 / 31.1 / 30.7 / 32.6, full
                        # 35.4 / 30.0 / 30.2 / 32.8
decode_args="--beam_size 4 --batch_size 16"   # options for llm_asr_inference
inference_nj=1          # stage 6: decoding jobs per system through $decode_cmd (cmd.sh: parallel processes here,
                        # one srun each on Slurm), job j taking whole batches j, j+N, ..., merged: the same
                        # hypotheses as one job (local/merge_decode_shards.py)
gpu_inference=false     # stage 6: decode on a GPU (--ngpu 1 per job; ask the scheduler for one in decode_cmd)
score_args=""           # options for local/score_cer.py, e.g. "--t2s true" to score traditional characters
                        # as simplified (a real LLM may write them; data_args "--t2s true" does it for KeSpeech)
decode_model=valid.acc.ave.pth        # checkpoint decoded in stage 6
test_sets=""            # default: every data/test_* and the source test set
systems=""              # stage 6 systems (default: source + those of --train_configs)
reports=true            # stage 6: write the tables (RESULTS.md) and plots; false: decode and score only
                        # (local/tune_dev.py's dev decodings: --test_sets dev --reports false)
python=python3          # interpreter (path.sh activates tools/venv)
verbose=false           # true: show full logs and Python tracebacks of user errors
encoder_outputs=true    # true: the frozen source encoder runs once per data set (stage 4 step 3, stages 5-6
                        # read its outputs from $exp_dir/encoder_out); false: every run encodes (set it
                        # when a stage-5 system trains the encoder; ignored for --feats_type raw)
sys_jobs=2              # stages 5 and 6: systems trained / decoded at the same time, each with
                        # (CPU cores / sys_jobs) threads; on a few cores, two one-thread jobs beat one two-thread job

# ---------------------------------------------------------------- option parsing (ours)
help_message=$(sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//')   # the header comment
command_line="$0 $*"
given=" "   # the settings given on the command line
default_train_configs=$train_configs   # their order is the order of the results table
declared=$(sed -n '/^# ---* settings/,/^# ---* option parsing/p' "$0" | grep -oE '^[a-z_]+=' | tr -d '=')
print_settings() {  # each setting, its default and its whole comment
    echo "Settings (--name value):"
    awk '/^# -+ settings/ { on = 1; next } /^# -+ option parsing/ { on = 0 }
         on && /^[a-z_]+=/ { sub(/=/, " "); print "  --" $0; next }
         on && /^ +#/ { sub(/^ +# ?/, ""); print "          " $0 }' "$0"
}
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) echo "$help_message"; echo; print_settings; exit 0 ;;
        --*=*) name=${1%%=*}; name=${name#--}; value=${1#*=}; shift ;;
        --*) name=${1#--}
             if [ $# -lt 2 ]; then echo "$0: option --$name needs a value" >&2; exit 2; fi
             value=$2; shift 2 ;;
        *) echo "$0: unexpected argument '$1' (options are --name value; see --help)" >&2; exit 2 ;;
    esac
    name=${name//-/_}
    given+=" $name "
    if ! grep -qx "$name" <<< "$declared"; then
        echo "$0: unknown option --$name (see --help for the settings)" >&2; exit 2
    fi
    printf -v "$name" '%s' "$value"
done

. ./local/recipe_lib.sh   # log, die, run_logged, run_jobs, up_to_date, mark_done, ...
for v in stage stop_stage; do
    is_int "${!v}" && [ "${!v}" -ge 1 ] && [ "${!v}" -le 6 ] || die "--$v must be a stage number from 1 to 6, not '${!v}'"
done
[ "$stage" -le "$stop_stage" ] || die "--stage $stage comes after --stop_stage $stop_stage: no stage would run"
for v in nj seed ngpu sys_jobs aid_source_utts ngram_order inference_nj; do is_int "${!v}" || die "--$v must be a non-negative integer, not '${!v}'"; done
seen_seeds=" $seed "
for k in $train_seeds; do
    is_int "$k" || die "--train_seeds must be non-negative integers, not '$k'"
    [ "$k" = "$(( 10#$k ))" ] || die "--train_seeds: write '$k' as $(( 10#$k )) (it names the directories <system>_seed<k>)"
    case $seen_seeds in *" $k "*) die "--train_seeds '$train_seeds' repeats seed $k (--seed is $seed, which every system runs with anyway)" ;; esac
    seen_seeds+="$k "
done
[ "$sys_jobs" -ge 1 ] || die "--sys_jobs must be at least 1"
[[ $ngram_weight =~ ^[0-9]*\.?[0-9]+$ ]] || die "--ngram_weight must be a non-negative number, not '$ngram_weight'"
fusion() { { [ "$ngram_order" -gt 0 ] || [ -n "$ngram_lm" ]; } && awk -v w="$ngram_weight" 'BEGIN {exit !(w > 0)}'; }
[ "$nj" -ge 1 ] || die "--nj must be at least 1"
[ "$inference_nj" -ge 1 ] || die "--inference_nj must be at least 1"
case "$gpu_inference" in true) decode_ngpu=1 ;; false) decode_ngpu=0 ;; *) die "--gpu_inference must be true or false, not '$gpu_inference'" ;; esac
case "$verbose" in true|false) ;; *) die "--verbose must be true or false, not '$verbose'" ;; esac
case "$reports" in true|false) ;; *) die "--reports must be true or false, not '$reports'" ;; esac
case "$feats_type" in fbank|fbank_pitch|raw) ;; *) die "--feats_type must be fbank_pitch, fbank or raw, not '$feats_type'" ;; esac
[ "$verbose" = true ] && export HDMOLE_VERBOSE=1
if [ -n "$whisper_dir" ]; then  # the source model on a pre-trained, frozen Whisper encoder
    [ -f "$whisper_dir/config.json" ] || die "--whisper_dir $whisper_dir has no config.json (install Whisper base with: bash tools/install_whisper.sh base)"
    whisper_dir=$(cd "$whisper_dir" && pwd)
    case $given in *" feats_type "*) [ "$feats_type" = raw ] || die "--whisper_dir reads waveforms: --feats_type must be raw, not '$feats_type'" ;; esac
    case $given in *" source_encoder_config "*|*" source_tone_config "*)
        [ -z "$source_encoder_config$source_tone_config" ] || die "--whisper_dir: the Whisper encoder is pre-trained; leave out --source_encoder_config and --source_tone_config (stage 4's CTC steps)" ;; esac
    case $given in *" source_config "*) ;; *) source_config=conf/train_source_whisper.yaml ;; esac
    feats_type=raw; source_encoder_config=""; source_tone_config=""
fi

. ./path.sh
. ./cmd.sh
. ./db.sh
[ -z "$kespeech" ] && kespeech=${KESPEECH:-}
[ -z "$source_dir" ] && source_dir=${SOURCE_DIR:-}
case "$demo_size" in tiny|small|default) ;; *) die "--demo_size must be tiny, small or default, not '$demo_size'" ;; esac
for c in $source_config $train_configs; do [ -f "$c" ] || die "training config '$c' does not exist"; done
# every YAML given parses to a mapping of settings (one ERROR line names the file and line), before any stage runs
yamls=($source_config $train_configs $source_encoder_config $source_tone_config $accent_id_config)
if [ -z "$llm_dir" ]; then [ -f "$llm_conf" ] || die "--llm_conf $llm_conf does not exist"; yamls+=("$llm_conf"); fi
yaml_check=$($python local/merge_config.py --check "${yamls[@]}" 2>&1) || die "$(tail -n 1 <<< "$yaml_check" | sed 's/^ERROR: //')"
check_system_names $train_configs
if [ -n "$whisper_dir" ] && [ "$($python -c "import sys, yaml; print((yaml.safe_load(open(sys.argv[1], encoding='utf-8')) or {}).get('encoder'))" "$source_config")" != whisper ]; then
    die "--whisper_dir needs a source config with 'encoder: whisper', but $source_config has another encoder (e.g. conf/train_source_whisper.yaml)"
fi

mkdir -p "$exp_dir/logs"   # every stage logs there, also when run alone into a new --exp_dir

# one run at a time in an exp dir: a second one is refused (the lock goes with this process and its jobs)
exec {lock_fd}>>"$exp_dir/.lock"
if ! flock -n "$lock_fd"; then
    die "$exp_dir is in use by another run ($(cat "$exp_dir/.lock.owner" 2>/dev/null || echo 'owner unknown')): wait for it to finish, or use another --exp_dir"
fi
echo "pid $$ on $(hostname), started $(date '+%Y-%m-%dT%H:%M:%S'): $command_line" > "$exp_dir/.lock.owner"
# file hashes (for the done-markers and model provenance) are cached by path, size and mtime
cache_dir=$exp_dir/.cache; mkdir -p "$cache_dir"
export HDMOLE_HASH_CACHE=$cache_dir/sha256.json


# ---------------------------------------------------------------- stage 1: data
if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
    if [ -n "$kespeech" ]; then
        stage_start 1 "KeSpeech at $kespeech -> $data_dir/{train,dev,test_*,source_test}"
        args=(--kespeech "$kespeech" --out_dir "$data_dir")
        [ -n "$source_dir" ] && args+=(--source_dir "$source_dir")
        run_logged "$train_cmd" "$exp_dir/logs/stage1_data.log" $python local/prepare_kespeech.py "${args[@]}" $data_args
    else
        stage_start 1 "offline demo corpus (size $demo_size) -> $data_dir/{source_*,train,dev,test_*}"
        run_logged "$train_cmd" "$exp_dir/logs/stage1_data.log" $python local/make_demo_corpus.py \
            --out_dir "$data_dir" --wav_dir "$data_dir/wav" --size "$demo_size" --seed "$seed" --nj "$nj" $data_args
    fi
    sets=$(cd "$data_dir" && ls -d source_* train dev test_* 2>/dev/null || true)
    run_logged "$train_cmd" "$exp_dir/logs/stage1_validate.log" $python local/data_dir.py \
        --accents "$data_dir/accents.txt" $(for s in $sets; do echo "$data_dir/$s"; done)
    log "data sets: $(echo $sets)"
    stage_end 1
fi

all_sets() { (cd "$data_dir" && ls -d source_* train dev test_* 2>/dev/null) || true; }

# ---------------------------------------------------------------- stage 2: features
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
    stage_start 2 "$feats_type features: $data_dir/<set> -> $dump_dir/$feats_type/<set>"
    [ -f "$data_dir/accents.txt" ] || die "$data_dir/accents.txt is missing: run stage 1 first"
    cmvn_set=source_train; [ -d "$data_dir/source_train" ] || cmvn_set=train
    for s in $(all_sets); do
        extra=()
        [ "$s" = "$cmvn_set" ] && [ "$feats_type" != raw ] && extra=(--cmvn_stats "$dump_dir/$feats_type/cmvn_stats.npz")
        run_logged "$train_cmd" "$exp_dir/logs/stage2_${feats_type}_$s.log" $python local/compute_fbank.py \
            "$data_dir/$s" "$dump_dir/$feats_type/$s" --feats_type "$feats_type" --nj "$nj" --overwrite true "${extra[@]}"
        slog=$exp_dir/logs/stage2_${feats_type}_$s.log
        log "  $s: $(wc -l < "$dump_dir/$feats_type/$s/speech_shape") utterances ($(last_run "$slog" | grep -q 'skipped' && echo skipped, up to date || echo done))"
        last_run "$slog" | grep 'redone' | sed 's/^/    /' || true
    done
    stage_end 2
fi

# ---------------------------------------------------------------- stage 3: tokenizer + LLM
[ -z "$llm_dir" ] && llm_dir_eff="$exp_dir/llm" || llm_dir_eff="$llm_dir"
ngram_own=$exp_dir/ngram/lm.arpa   # stage 3's
[ -z "$ngram_text" ] && [ -f "$data_dir/ngram_text" ] && ngram_text=$data_dir/ngram_text
train_ngram_lm() {  # the n-gram LM over the LLM's tokens: training transcripts + --ngram_text -> $ngram_own
    local texts=() valid=() plain=() tokfiles=() s f
    for s in source_train train; do [ -f "$data_dir/$s/text" ] && texts+=("$data_dir/$s/text"); done
    for s in source_dev dev; do [ -f "$data_dir/$s/text" ] && valid+=("$data_dir/$s/text"); done
    if [ -n "$ngram_text" ]; then
        [ -f "$ngram_text" ] || die "--ngram_text $ngram_text does not exist"
        plain=(--plain_text "$ngram_text")
    fi
    for f in tokenizer.json tokenizer_config.json vocab.json merges.txt tokenizer.model; do
        [ -f "$llm_dir_eff/$f" ] && tokfiles+=(--file "tokenizer $f=$llm_dir_eff/$f")
    done
    [ "${#texts[@]}" -gt 0 ] || die "no training transcripts ($data_dir/source_train/text or $data_dir/train/text) for the n-gram LM"
    if ! up_to_date "$(dirname "$ngram_own")" "n-gram LM" remove $(for f in "${texts[@]}" "${plain[@]:1}"; do echo --file "$f"; done) \
            "${tokfiles[@]}" --value "order=$ngram_order"; then
        run_logged "$train_cmd" "$exp_dir/logs/stage3_ngram.log" $python local/train_ngram_lm.py --llm_dir "$llm_dir_eff" \
            --train_text "${texts[@]}" "${plain[@]}" --valid_text "${valid[@]}" --order "$ngram_order" --out "$ngram_own"
        mark_done "$(dirname "$ngram_own")"
    fi
    grep -E "INFO: " "$exp_dir/logs/stage3_ngram.log" | tail -n 2 | sed 's/^.*INFO: /    /' || true
}
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
    if [ -n "$llm_dir" ]; then
        stage_start 3 "using the LLM and tokenizer of $llm_dir"
        $python -m espnet_hdmole.asr.llm_utils "$llm_dir" 2> "$exp_dir/logs/stage3_llm_check.log" \
            || die "--llm_dir: $(sed 's/^ERROR: //' "$exp_dir/logs/stage3_llm_check.log" | tail -n 1)"
    else
        stage_start 3 "character tokenizer + Qwen2-style LM pre-trained on the training text -> $llm_dir_eff"
        prompts=$($python - "$source_config" $train_configs <<'PY'
import sys, yaml
chars = set()
for f in sys.argv[1:]:
    mc = (yaml.safe_load(open(f, encoding="utf-8")) or {}).get("model_conf", {}) or {}
    chars |= set(str(mc.get("prompt", "")) + str(mc.get("prompt_prefix", "")))
print("".join(sorted(chars)))
PY
)
        texts=(); for s in source_train train; do [ -f "$data_dir/$s/text" ] && texts+=("$data_dir/$s/text"); done
        valid=(); for s in source_dev dev; do [ -f "$data_dir/$s/text" ] && valid+=("$data_dir/$s/text"); done
        plain=(); [ -f "$data_dir/lm_text" ] && plain=(--plain_text "$data_dir/lm_text")
        if ! up_to_date "$llm_dir_eff" "LLM" keep $(for f in "${texts[@]}" "${valid[@]}" "${plain[@]:1}"; do echo --file "$f"; done) --file "llm_conf=$llm_conf" \
                --value "prompt characters=$prompts" --value "seed=$seed"; then
            run_logged "$train_cmd" "$exp_dir/logs/stage3_llm.log" $python local/pretrain_llm.py \
                --train_text "${texts[@]}" "${plain[@]}" --valid_text "${valid[@]}" --vocab_text "${valid[@]}" \
                --extra_chars "$prompts" --out_dir "$llm_dir_eff" --seed "$seed" --config "$llm_conf"
            mark_done "$llm_dir_eff"
        fi
        grep -E "^epoch|parameters" "$exp_dir/logs/stage3_llm.log" | tail -n 2 | sed 's/^/    /' || true
    fi
    if [ -n "$ngram_lm" ]; then log "  n-gram LM: $ngram_lm (--ngram_lm)"; elif [ "$ngram_order" -gt 0 ]; then train_ngram_lm; fi
    stage_end 3
fi

# common training data options
feats=$dump_dir/$feats_type
decode_sets() { [ -n "$test_sets" ] && echo "$test_sets" || (cd "$feats" && ls -d test_* source_test 2>/dev/null | paste -sd' '); }  # stage 6's
if [ "$feats_type" = raw ]; then speech_file=wav.scp; speech_type=sound; else speech_file=feats.scp; speech_type=kaldi_ark; fi
. ./local/recipe_train_opts.sh   # train_data_opts, common_model_opts, train_inputs, write_info, write_enc_out, ...

# ---------------------------------------------------------------- stage 4: source model
. ./local/recipe_source_model.sh   # steps 1, 1b, 2, 3: run_stage4, frozen_encoder_model, ...
. ./local/recipe_finetune.sh       # stage 5: train_system
. ./local/recipe_decode.sh         # stage 6: decode_system, decode_in_jobs
enc_model=$(frozen_encoder_model)  # the frozen encoder every later run shares (its outputs are stored)
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
    if [ -n "$pretrained_model" ]; then
        stage_start 4 "using the pre-trained source model $pretrained_model"
        [ -f "$pretrained_model" ] || die "--pretrained_model $pretrained_model does not exist"
        [ -f "$(dirname "$pretrained_model")/config.yaml" ] || die "no config.yaml beside $pretrained_model"
        write_stage4_enc_out
        [ -z "$accent_id_config" ] || train_accent_id
    else
        stage_start 4 "source-domain pre-training: $feats/source_train -> $source_exp"
        [ -d "$feats/source_train" ] || die "no source-domain training set ($feats/source_train); give --pretrained_model"
        need_llm
        run_stage4
    fi
    stage_end 4
fi
init_model=${pretrained_model:-$source_exp/valid.acc.ave.pth}
aid_model=${aid_model:-$aid_exp/valid.acc_aid.ave.pth}

# ---------------------------------------------------------------- stage 5: multi-accent fine-tuning
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
    stage_start 5 "multi-accent fine-tuning from $init_model: $(for c in $train_configs; do system_name "$c"; done | paste -sd' ')"
    [ -f "$init_model" ] || die "the source model $init_model does not exist: run stage 4 or give --pretrained_model"
    need_llm
    write_enc_out "$enc_model" train dev
    jobs5=(); for c in $train_configs; do jobs5+=("$c"); for k in $train_seeds; do jobs5+=("$c@$k"); done; done
    if decode_in_stage5; then  # stage 6's decodings in the slots the last systems leave free
        rm -f "$cache_dir"/stage5_trained.*
        [ -n "$head_pid" ] || { rm -f "$stage5_inputs_done"*; stage5_write_decode_inputs || exit 1; }
        for s in $(stage6_systems); do jobs5+=("decode@$s"); done
    fi
    run_jobs stage5_job "${jobs5[@]}"
    stage_end 5
fi

# ---------------------------------------------------------------- stage 6: decoding and scoring
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
    [ -n "$systems" ] || systems=$(stage6_systems)
    test_sets=$(decode_sets)
    stage_start 6 "decoding [$test_sets] with [$systems]"
    write_decode_inputs
    decode_opts
    run_jobs decode_system $systems
    # the tables describe every decoded system of the exp dir, not only those decoded now:
    # source, the default systems in their order, then any others (superseded *.stale-* runs left out)
    results_systems=$(
        { echo source; for c in $default_train_configs; do system_name "$c"; done
          for d in "$exp_dir"/*/; do basename "$d"; done | sort; } \
        | awk '!seen[$0]++' | while read -r s; do
            case $s in *.stale-*) continue ;; esac
            if [ -f "$exp_dir/$s/params.json" ] && [ -f "$exp_dir/$s/decode_union/.done" ]; then echo "$s"; fi
        done | paste -sd' ')
    if [ "$reports" = false ]; then
        log "no RESULTS.md (--reports false): the scores are in $exp_dir/<system>/decode_<set>/score_cer"
    elif [ -z "$results_systems" ]; then
        log "no RESULTS.md: no decoded system of $exp_dir has its params.json (written when stage 4 or 5 trains it)"
    else
        run_logged "$decode_cmd" "$exp_dir/logs/stage6_results.log" $python local/make_results.py \
            --exp_dir "$exp_dir" --systems $results_systems --accents_file "$data_dir/accents.txt" \
            --source_set source_test --baseline source --full_ft_system full --code_dirs "$data_dir" "$dump_dir" "$llm_dir_eff" \
            "$exp_dir/source_encoder" "$exp_dir/source_encoder_tone" "$aid_exp" "$enc_out"
        log "results: $exp_dir/RESULTS.md and $exp_dir/*/RESULTS.md, plots in $exp_dir/plots"
    fi
    stage_end 6
fi
log "finished stages $stage..$stop_stage"
