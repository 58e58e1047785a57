# Training options of the recipe's runs (hdmole.sh sources this file after stage 3): data and model
# options, the inputs a run's done-marker records, the model report, and the frozen encoder's
# stored outputs. They read hdmole.sh's settings when called.

train_data_opts() {  # train_data_opts TRAIN_SET VALID_SET
    local tr=$feats/$1 va=$feats/$2
    echo --train_data_path_and_name_and_type "$tr/$speech_file,speech,$speech_type" \
         --train_data_path_and_name_and_type "$tr/text,text,text" \
         --train_data_path_and_name_and_type "$tr/utt2accent,accent,text" \
         --valid_data_path_and_name_and_type "$va/$speech_file,speech,$speech_type" \
         --valid_data_path_and_name_and_type "$va/text,text,text" \
         --valid_data_path_and_name_and_type "$va/utt2accent,accent,text" \
         --train_shape_file "$tr/speech_shape" --valid_shape_file "$va/speech_shape"
}
common_model_opts() {
    echo --model_conf "llm_dir=$llm_dir_eff" --model_conf "accent_list=[$(paste -sd, "$data_dir/accents.txt")]" \
         --ngpu "$ngpu" --seed "$seed" --resume true
    # N GPUs: one process each (ESPnet's DDP, as its own recipes ask for it); without this ESPnet runs
    # one process with DataParallel (--train_args "--multiprocessing_distributed false" still asks for that)
    [ "$ngpu" -le 1 ] || echo --multiprocessing_distributed true
    if [ "$feats_type" != raw ]; then
        echo --normalize global_mvn --normalize_conf "stats_file=$feats/cmvn_stats.npz" \
             --input_size "$([ "$feats_type" = fbank_pitch ] && echo 83 || echo 80)"
    else
        echo --input_size 1
    fi
    [ -z "$whisper_dir" ] || echo --encoder_conf "whisper_dir=$whisper_dir"
}
need_llm() {
    [ -d "$llm_dir_eff" ] || die "the LLM directory $llm_dir_eff does not exist: run stage 3 first, or give --llm_dir DIR"
}
train_inputs() {  # train_inputs TRAIN_SET VALID_SET: the data, statistics and LLM a training run reads
    echo --data "$feats/$1" --data "$feats/$2" --model_dir "$llm_dir_eff" --file "$data_dir/accents.txt"
    [ "$feats_type" != raw ] && echo --file "$feats/cmvn_stats.npz"
    [ -z "$whisper_dir" ] || echo --model_dir "$whisper_dir"
    true
}
info_opts() {  # info_opts: espnet_hdmole.bin.model_info's options (params.json / routing.json on dev) into the caller's array info
    info=(--model "$decode_model" --data "$feats/dev" --accents "$data_dir/accents.txt")
    [ -f "$(enc_out_scp dev)" ] && info+=(--encoder_out "$(enc_out_scp dev)")
    true
}
write_info() {  # write_info DIR: model_info in a process of its own (stage 5 runs it inside training: --model_info_args)
    local info; info_opts
    $python -m espnet_hdmole.bin.model_info --exp "$1" "${info[@]}" >> "$1/model_info.log" 2>&1 \
        || die "model_info failed for $1 (see $1/model_info.log)"
}

# The frozen source encoder's outputs, written once per data set into $enc_out/<set> and read by
# step 3 of stage 4, every stage-5 system and every stage-6 decoding instead of the encoder
# (espnet_hdmole.bin.dump_encoder_outputs). Each run checks that its own encoder reproduces them.
enc_out=$exp_dir/encoder_out
uses_enc_out() { [ "$encoder_outputs" = true ] && [ "$feats_type" != raw ]; }
enc_out_scp() {  # enc_out_scp SET: the set's stored outputs (scp path), or nothing when they are not in use
    uses_enc_out && [ -f "$enc_out/$1/.done" ] && echo "$enc_out/$1/encoder_out.scp"
    true
}
write_enc_out() {  # write_enc_out MODEL SET...: the outputs of MODEL's encoder for each SET not yet up to date
    local model=$1 s todo=() args=(); shift
    uses_enc_out || return 0
    for s in "$@"; do
        if ! up_to_date "$enc_out/$s" "encoder outputs of $s" remove --file "model=$model" \
                --file "model config=$(dirname "$model")/config.yaml" --file "$feats/cmvn_stats.npz" --data "$feats/$s"; then
            todo+=("$s"); args+=(--feats_scp "$feats/$s/$speech_file" --output_dir "$enc_out/$s")
        fi
    done
    [ "${#todo[@]}" -gt 0 ] || return 0
    log "  the frozen encoder's outputs of [${todo[*]}] (once, for every system) -> $enc_out/<set>"
    run_logged "$train_cmd" "$exp_dir/logs/encoder_out.log" $python -m espnet_hdmole.bin.dump_encoder_outputs \
        --model_config "$(dirname "$model")/config.yaml" --model_file "$model" "${args[@]}"
    for s in "${todo[@]}"; do mark_done "$enc_out/$s"; done
}
enc_out_opts() {  # enc_out_opts TRAIN_SET VALID_SET: the training options that read their stored outputs
    local tr va
    tr=$(enc_out_scp "$1"); va=$(enc_out_scp "$2")
    [ -n "$tr" ] && echo --train_data_path_and_name_and_type "$tr,encoder_out,kaldi_ark"
    [ -n "$va" ] && echo --valid_data_path_and_name_and_type "$va,encoder_out,kaldi_ark"
    true
}
