# Stage 5 of hdmole.sh: one multi-accent fine-tuning system. hdmole.sh sources this file (after
# local/recipe_source_model.sh); the function reads its settings when called, and stage 5 runs it
# for every system (and extra seed) through run_jobs, sys_jobs at a time.
#
#   train_system CONFIG[@SEED]  -> $exp_dir/<system>[_seed<SEED>], skipped when up to date
#   stage5_job JOB              a training job (CONFIG[@SEED]; a marker says when it has ended), or
#                               decode@SYSTEM (local/recipe_decode.sh: decodings in stage 5's tail)

job_system() {  # job_system CONFIG[@SEED]: the system's name, <system>[_seed<SEED>]
    local cfg=${1%@*}
    if [ "$cfg" != "$1" ]; then echo "$(system_name "$cfg")_seed${1##*@}"; else system_name "$cfg"; fi
}
stage5_job() {
    case $1 in
        decode@*) stage5_decode_job "${1#decode@}" ;;
        *) run_marked "$(stage5_trained "$(job_system "$1")")" train_system "$1" || exit 1 ;;
    esac
}

train_system() {  # train_system CONFIG[@SEED]: one stage-5 system (with another seed: <system>_seed<SEED>)
    local cfg=${1%@*} run_seed=$seed sys out merged head_from aid_init aid_input t0 init_spec compress info
    sys=$(job_system "$1")
    if [ "$cfg" != "$1" ]; then run_seed=${1##*@}; fi
    out=$exp_dir/$sys
    merged=$cache_dir/$sys.train_config.yaml
    merge_config "$(dirname "$init_model")/config.yaml" "$cfg" "$merged"
    # a system with an accent head (use_accent_head) starts from step 3's trained head (and
    # waits for it if step 3 still trains beside this stage), and takes its shape
    aid_init=(); aid_input=()
    if [ "$(model_conf_get "$merged" use_accent_head None)" = True ]; then
        [ "$(dirname "$aid_model")" != "$aid_exp" ] || wait_for_accent_head
        if [ -f "$(dirname "$aid_model")/config.yaml" ]; then
            merge_config "$(dirname "$init_model")/config.yaml" "$cfg" "$merged" \
                --accent_head_from "$(dirname "$aid_model")/config.yaml"
        fi
        [ -f "$aid_model" ] || die "$cfg uses an accent head (model_conf.use_accent_head), which stage 4 step 3 trains: $aid_model does not exist (run stage 4 with --accent_id_config, or set use_accent_head: false)"
        aid_init=("$aid_model:accent_head:accent_head"); aid_input=(--file "accent-ID model=$aid_model")
    fi
    if up_to_date "$out" "$sys" keep --file "config=$cfg" --file "source model config=$(dirname "$init_model")/config.yaml" \
        --file "source model=$init_model" "${aid_input[@]}" \
        $(train_inputs train dev) --value "options=$train_args" --value "seed=$run_seed"; then
        return 0
    fi
    t0=$(date +%s)
    log "  $sys: $cfg -> $out (resumes from $out/checkpoint.pth if present)"
    cp "$merged" "$out/train_config.yaml" || die "cannot write $out/train_config.yaml"
    # the source model's CTC head is kept only where the system uses it (ctc_compress)
    init_spec=$init_model:::ctc
    compress=$(model_conf_get "$out/train_config.yaml" ctc_compress none) || exit 1
    [ "$compress" = none ] || init_spec=$init_model
    info_opts  # params.json / routing.json on dev, written by the training process once it has trained
    run_logged "$train_cmd" "$out/train.log" $python $train_launcher -m espnet_hdmole.bin.llm_asr_train \
        --config "$out/train_config.yaml" --output_dir "$out" --init_param "$init_spec" "${aid_init[@]}" $(common_model_opts) \
        $(train_data_opts train dev) $(enc_out_opts train dev) $train_args --seed "$run_seed" \
        --model_info_args "$(shell_words "${info[@]}")"
    [ -f "$out/params.json" ] || die "training of $sys wrote no $out/params.json (see $out/train.log)"
    mark_done "$out"
    log "  $sys: $(grep -o 'trainable parameters: [^=]*= [0-9.]*%' "$out/train.log" | head -n 1), $(( $(date +%s) - t0 )) s"
}
