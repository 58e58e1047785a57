# Stage 4 of hdmole.sh: the source model and the accent-ID head. hdmole.sh sources this file after
# stage 3 (and local/recipe_train_opts.sh); the functions read its settings when called.
#
#   step 1   the encoder alone, CTC over toneless pinyin units      -> $exp_dir/source_encoder
#   step 1b  the CTC continued over toned units, from step 1         -> $exp_dir/source_encoder_tone
#   step 2   the LLM-based ASR model on that frozen encoder          -> $exp_dir/source
#   step 3   the accent-ID head alone, on the accent training set (+ some source utterances) -> $exp_dir/accent_id
# When step 2 keeps the encoder of step 1/1b frozen (freeze_param: [encoder]), the encoder's
# outputs of train and dev are written right after step 1b, and steps 2 and 3 (which need only
# that encoder) train side by side, one CPU share each; otherwise step 3 waits for step 2.

source_exp=$exp_dir/source
aid_exp=$exp_dir/accent_id

# a training YAML's freeze_param freezes the whole encoder
freezes_encoder() {
    $python -c "import sys, yaml; c = yaml.safe_load(open(sys.argv[1], encoding='utf-8')) or {}; sys.exit(0 if 'encoder' in (c.get('freeze_param') or []) else 1)" "$1"
}
ctc_step_exp() {  # the run whose CTC head (and encoder) step 2 takes: step 1b's, else step 1's
    if [ -n "$source_tone_config" ]; then echo "$exp_dir/source_encoder_tone"; else echo "$exp_dir/source_encoder"; fi
}
# The checkpoint of the frozen encoder that every run after stage 4's encoder steps shares (its
# outputs are stored from it): a --pretrained_model; step 1b's (or step 1's) CTC model when step 2
# keeps its encoder frozen; else the source model.
frozen_encoder_model() {
    if [ -n "$pretrained_model" ]; then
        echo "$pretrained_model"
    elif [ -n "$source_encoder_config" ] && freezes_encoder "$source_config"; then
        echo "$(ctc_step_exp)/valid.loss.best.pth"
    else
        echo "$source_exp/valid.acc.ave.pth"
    fi
}
# the YAML the accent-ID head's config is merged onto: the source model's own
source_model_config() {
    if [ -n "$pretrained_model" ]; then echo "$(dirname "$pretrained_model")/config.yaml"; else echo "$source_config"; fi
}

last_valid() { grep -E "epoch results" "$1" | tail -n 1 | sed 's/^.*\[valid\]/    valid:/' || true; }

train_encoder_steps() {  # steps 1 and 1b
    local enc_exp=$exp_dir/source_encoder ctc_exp units
    if ! up_to_date "$enc_exp" "source_encoder" keep --file "config=$source_config" --file "encoder config=$source_encoder_config" \
            $(train_inputs source_train source_dev) --value "options=$train_args $source_train_args" --value "seed=$seed"; then
        log "  step 1: encoder pre-training ($source_config + $source_encoder_config) -> $enc_exp"
        $python local/merge_config.py "$source_config" "$source_encoder_config" "$enc_exp/train_config.yaml"
        run_logged "$train_cmd" "$enc_exp/train.log" $python $train_launcher -m espnet_hdmole.bin.llm_asr_train \
            --config "$enc_exp/train_config.yaml" --output_dir "$enc_exp" $(common_model_opts) \
            $(train_data_opts source_train source_dev) $train_args $source_train_args
        mark_done "$enc_exp"
    fi
    last_valid "$enc_exp/train.log"
    ctc_exp=$(ctc_step_exp)
    if [ -n "$source_tone_config" ]; then  # step 1b: the CTC over toned units, from step 1's encoder
        if ! up_to_date "$ctc_exp" "source_encoder_tone" keep --file "config=$source_config" \
                --file "encoder config=$source_encoder_config" --file "tone config=$source_tone_config" \
                --file "step-1 encoder=$enc_exp/valid.loss.best.pth" $(train_inputs source_train source_dev) \
                --value "options=$train_args $source_train_args" --value "seed=$seed"; then
            log "  step 1b: the CTC over toned units ($source_tone_config), from step 1's encoder -> $ctc_exp"
            $python local/merge_config.py "$source_config" "$source_encoder_config" "$source_tone_config" \
                "$ctc_exp/train_config.yaml"
            run_logged "$train_cmd" "$ctc_exp/train.log" $python $train_launcher -m espnet_hdmole.bin.llm_asr_train \
                --config "$ctc_exp/train_config.yaml" --output_dir "$ctc_exp" $(common_model_opts) \
                --init_param "$enc_exp/valid.loss.best.pth:encoder:encoder" \
                $(train_data_opts source_train source_dev) $train_args $source_train_args
            mark_done "$ctc_exp"
        fi
        last_valid "$ctc_exp/train.log"
    fi
    # a CTC-compressing model (model_conf.ctc_compress) also takes the CTC head: its units must match
    units=$(model_conf_get "$ctc_exp/train_config.yaml" ctc_units llm)
    if [ "$compress" != none ] && [ "$units" != "$(model_conf_get "$source_config" ctc_units llm)" ]; then
        die "$source_config compresses with a CTC head over model_conf.ctc_units: $(model_conf_get "$source_config" ctc_units llm), but the CTC of $ctc_exp was trained over $units: make them agree (model_conf.ctc_units of $source_config, $source_encoder_config${source_tone_config:+, $source_tone_config})"
    fi
}

train_source_model() {  # step 2
    local ctc_model init=() step1=()
    if [ -n "$source_encoder_config" ]; then
        ctc_model=$(ctc_step_exp)/valid.loss.best.pth
        init=(--init_param "$ctc_model:encoder:encoder")
        [ "$compress" = none ] || init+=("$ctc_model:ctc:ctc")
        step1=(--file "step-1 encoder=$ctc_model")
    fi
    if ! up_to_date "$source_exp" "source" keep --file "config=$source_config" "${step1[@]}" \
            $(train_inputs source_train source_dev) --value "options=$train_args $source_train_args" --value "seed=$seed"; then
        log "  step 2: the LLM-based ASR model ($source_config${ctc_model:+, encoder and CTC head from $ctc_model}) -> $source_exp"
        run_logged "$train_cmd" "$source_exp/train.log" $python $train_launcher -m espnet_hdmole.bin.llm_asr_train \
            --config "$source_config" --output_dir "$source_exp" $(common_model_opts) "${init[@]}" \
            $(train_data_opts source_train source_dev) $train_args $source_train_args
        write_enc_out "$enc_model" train dev   # (model_info reads dev's)
        write_info "$source_exp"
        mark_done "$source_exp"
    fi
    last_valid "$source_exp/train.log"
}

# The accent-ID head's training set: the accent training set, plus --aid_source_utts utterances of
# source_train as standard Mandarin (local/accent_id_data.py), with their stored encoder outputs.
aid_uses_source() { [ "$aid_source_utts" -gt 0 ] && [ -n "$accent_id_config" ] && [ -d "$feats/source_train" ]; }
aid_train_set() { if aid_uses_source; then echo train_accent_id; else echo train; fi; }
aid_source_subset() {  # makes $feats/source_train_aid and names it (nothing when not in use)
    aid_uses_source || return 0
    $python local/accent_id_data.py subset --src "$feats/source_train" --num "$aid_source_utts" \
        --out "$feats/source_train_aid" > /dev/null || die "could not take --aid_source_utts $aid_source_utts utterances of $feats/source_train"
    echo source_train_aid
}
make_aid_train_set() {  # after the encoder outputs of train and source_train_aid are written (when in use)
    aid_uses_source || return 0
    local scps=()
    if uses_enc_out; then
        scps=(--scp "$(enc_out_scp train)" "$(enc_out_scp source_train_aid)" --out_scp "$enc_out/train_accent_id/encoder_out.scp")
        up_to_date "$enc_out/train_accent_id" "encoder outputs of train_accent_id" remove \
            --file "${scps[1]}" --file "${scps[2]}" > /dev/null || true
    fi
    $python local/accent_id_data.py combine --src "$feats/train" "$feats/source_train_aid" \
        --out "$feats/train_accent_id" "${scps[@]}" > /dev/null || die "could not make $feats/train_accent_id"
    if uses_enc_out; then mark_done "$enc_out/train_accent_id"; fi
    log "  the accent-ID head's training set: train + $(wc -l < "$feats/source_train_aid/text") utterances of source_train -> $feats/train_accent_id"
}
# the frozen encoder's outputs of train and dev (and of the accent-ID head's source utterances),
# then that head's training set
write_stage4_enc_out() {
    local aid_sets
    aid_sets=$(aid_source_subset) || exit 1   # (its message is out already)
    write_enc_out "$enc_model" train dev $aid_sets
    make_aid_train_set
}

train_accent_id() {  # step 3
    local base cfg=$accent_id_config
    base=$(source_model_config)
    # the default head reads CTC posteriors + the 3 pitch features: it needs both
    if [ "$cfg" = conf/train_accent_id.yaml ] && { [ "$feats_type" != fbank_pitch ] ||
            [ "$(model_conf_get "$base" ctc_compress none)" = none ]; }; then
        cfg=conf/train_accent_id_encoder.yaml
        log "  step 3 reads the encoder output ($cfg): the default head reads CTC posteriors and pitch, which need --feats_type fbank_pitch and a source model with a CTC head (ctc_compress)"
    fi
    if ! up_to_date "$aid_exp" "accent_id" keep --file "accent-ID config=$cfg" \
            --file "source model config=$base" --file "encoder and CTC model=$enc_model" \
            $(train_inputs "$(aid_train_set)" dev) --value "options=$train_args" --value "seed=$seed"; then
        log "  step 3: the accent-ID head ($cfg on $base), encoder and CTC head from $enc_model -> $aid_exp"
        $python local/merge_config.py "$base" "$cfg" "$aid_exp/train_config.yaml"
        run_logged "$train_cmd" "$aid_exp/train.log" $python $train_launcher -m espnet_hdmole.bin.llm_asr_train \
            --config "$aid_exp/train_config.yaml" --output_dir "$aid_exp" --init_param "$enc_model" $(common_model_opts) \
            $(train_data_opts "$(aid_train_set)" dev) $(enc_out_opts "$(aid_train_set)" dev) $train_args
        mark_done "$aid_exp"
    fi
    last_valid "$aid_exp/train.log"
}
# step 2, then (when stage 6 follows) the encoder outputs of stage 6's test sets, on the core step 2
# frees while step 3 still trains (stage 6 then finds them up to date)
source_job() {
    case $1 in
        step2) train_source_model; [ "$stop_stage" -lt 6 ] || write_enc_out "$enc_model" $(decode_sets) ;;
        step3) train_accent_id ;;
    esac
}
# When stage 5 follows (and runs jobs side by side), step 3 goes on in the background after step 2
# has ended: stage 5 counts it as one of its running jobs (busy_pids), starts the systems on the
# other core meanwhile, and a system that routes with the head waits for it (wait_for_accent_head).
head_pid=""
head_finished=$cache_dir/accent_id.finished
step3_in_background() {
    local threads=$(( $(nproc) / 2 )); [ "$threads" -ge 1 ] || threads=1
    rm -f "$head_finished"
    ( export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; train_accent_id; touch "$head_finished" ) &
    head_pid=$!; busy_pids=("$head_pid")
    ( export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; source_job step2 ) &
    if ! wait "$!"; then
        wait "$head_pid" || true
        die "step 2 failed (see the ERROR lines above)"
    fi
    kill -0 "$head_pid" 2>/dev/null && log "  step 3 goes on beside stage 5's first systems"
    true
}
wait_for_accent_head() {  # a stage-5 system that starts from step 3's head, while step 3 may still train
    [ -n "$head_pid" ] || return 0
    [ -f "$head_finished" ] || log "  waiting for step 3 (the accent-ID head) to finish"
    while [ ! -f "$head_finished" ]; do
        kill -0 "$head_pid" 2>/dev/null || die "step 3 (the accent-ID head) failed: see $aid_exp/train.log"
        sleep 2
    done
}

run_stage4() {
    compress=$(model_conf_get "$source_config" ctc_compress none) || exit 1
    if [ "$compress" != none ] && [ -z "$source_encoder_config" ]; then
        die "$source_config compresses with a CTC head (model_conf.ctc_compress: $compress), which step 1 trains: give --source_encoder_config"
    fi
    [ -n "$source_encoder_config" ] && train_encoder_steps
    if [ "$enc_model" != "$source_exp/valid.acc.ave.pth" ] && [ -n "$accent_id_config" ]; then
        write_stage4_enc_out
        log "  steps 2 and 3 side by side (both on the frozen encoder of $enc_model)"
        if [ "$stop_stage" -ge 5 ] && [ "$sys_jobs" -ge 2 ] && [ -n "$train_configs" ]; then
            step3_in_background
        else
            run_jobs source_job step2 step3
        fi
    else
        train_source_model
        write_stage4_enc_out
        [ -z "$accent_id_config" ] || train_accent_id
    fi
}
