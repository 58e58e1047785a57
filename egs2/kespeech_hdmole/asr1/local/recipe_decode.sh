# Stage 6 of hdmole.sh: decoding and scoring of one system. hdmole.sh sources this file; stage 6
# writes the decoding inputs every system shares (write_decode_inputs), sets the options that read
# them (decode_opts), and runs decode_system for every system through run_jobs, sys_jobs at a time.
# With stage 6 to follow, stage 5 also decodes, in its tail (stage5_decode_job below).
#
#   stage6_systems             the systems stage 6 decodes by default: source (when trained here), then those of --train_configs
#   write_decode_inputs        the union of the test sets in $union: keys, features, accents, stored encoder outputs
#   decode_opts                accent_opts, stored_opts, ngram_opts, and decode_inputs (what a decoding's done-marker records)
#   decode_order KEYS          the union's utterance ids, longest first, from speech_shape lines on stdin
#   in_decode_order KEYS OUT   a Kaldi table (id value) on stdin, written to OUT in the order of KEYS
#   decode_system SYSTEM       all test sets in one run (--inference_nj jobs), then split and scored per set
#   decode_in_jobs DEC CMD...  the --inference_nj shards of one decoding, merged into DEC
#
# Decoding runs in the union's order, longest utterances first: a batch then holds utterances of
# similar lengths, so less of it is padding and its hypotheses end at about the same step. The
# hypotheses are those of any other order (measured on the default demo: the same text for all
# 1,650 utterances, 20% less decoding time).

decode_order() {  # decode_order KEYS: 'id length[,dim]' lines on stdin -> KEYS, longest first (ties by id)
    sort -u -k1,1 | awk '{ split($2, d, ","); print d[1], $1 }' | sort -k1,1nr -k2,2 | cut -d' ' -f2 > "$1.tmp"
    mv "$1.tmp" "$1"
}
in_decode_order() {  # in_decode_order KEYS OUT: the table on stdin, one line per id of KEYS in its order
    awk -v keys="$1" -v out="$2" '
        FNR == NR { line[$1] = $0; next }
        !($1 in line) { print "in_decode_order: " $1 " (" keys " line " FNR ") is missing from the table for " out > "/dev/stderr"; bad = 1; exit }
        { print line[$1] }
        END { exit bad }' - "$1" > "$2.tmp" || { rm -f "$2.tmp"; die "cannot write $2 in the order of $1"; }
    mv "$2.tmp" "$2"
}

stage6_systems() {
    local c k out=""
    # the source model is decoded when it was trained here (not with --pretrained_model elsewhere)
    if [ -z "$pretrained_model" ] || [ -f "$source_exp/$decode_model" ]; then out=source; fi
    for c in $train_configs; do
        out+=" $(system_name "$c")"; for k in $train_seeds; do out+=" $(system_name "$c")_seed$k"; done
    done
    echo "${out# }"
}
# All test sets are decoded in one run per system (one model load), then split per set; the union
# lists the utterances longest first (decode_order), so a batch holds utterances of similar lengths.
union=$exp_dir/decode_inputs
write_decode_inputs() {  # (test_sets set)
    local s
    for s in $test_sets; do  # (checked here: stage 5's tail runs this through run_marked, which ignores set -e)
        [ -f "$feats/$s/speech_shape" ] && [ -f "$feats/$s/$speech_file" ] \
            || die "test set '$s': $feats/$s has no speech_shape and $speech_file (stage 2 makes them; --test_sets names sets of $feats)"
    done
    mkdir -p "$union"
    for s in $test_sets; do cat "$feats/$s/speech_shape"; done | decode_order "$union/keys"
    for s in $test_sets; do cat "$feats/$s/$speech_file"; done | in_decode_order "$union/keys" "$union/$speech_file"
    # accent labels, read only by systems whose routing uses them (global_router: oracle)
    if (for s in $test_sets; do [ -f "$feats/$s/utt2accent" ] || exit 1; done); then
        for s in $test_sets; do cat "$feats/$s/utt2accent"; done | in_decode_order "$union/keys" "$union/utt2accent"
    else
        rm -f "$union/utt2accent"
    fi
    # the source encoder's outputs of the test sets, read by every system whose encoder it is
    # (the RTF then leaves the encoder out: its rtf file says so)
    if [ -f "$enc_model" ]; then write_enc_out "$enc_model" $test_sets; fi
    if uses_enc_out && (for s in $test_sets; do [ -n "$(enc_out_scp "$s")" ] || exit 1; done); then
        for s in $test_sets; do cat "$(enc_out_scp "$s")"; done | in_decode_order "$union/keys" "$union/encoder_out.scp"
    else
        rm -f "$union/encoder_out.scp"
    fi
    if fusion; then
        if [ -n "$ngram_lm" ]; then
            [ -f "$ngram_lm" ] || die "--ngram_lm $ngram_lm does not exist"
        else
            [ -f "$(dirname "$ngram_own")/.done" ] || die "$ngram_own is missing: run stage 3 (it makes the n-gram LM), give --ngram_lm, or --ngram_weight 0"
        fi
    fi
}
decode_opts() {  # (after write_decode_inputs)
    local lm=${ngram_lm:-$ngram_own}
    accent_opts=(); stored_opts=(); ngram_opts=()
    [ ! -f "$union/utt2accent" ] || accent_opts=(--data_path_and_name_and_type "$union/utt2accent,accent,text")
    [ ! -f "$union/encoder_out.scp" ] || stored_opts=(--data_path_and_name_and_type "$union/encoder_out.scp,encoder_out,kaldi_ark")
    if fusion; then ngram_opts=(--ngram_file "$lm" --ngram_weight "$ngram_weight"); fi
    decode_inputs=(--file "$union/$speech_file" --value "options=$decode_args" --value "encoder outputs stored=${#stored_opts[@]}"
                   --value "n-gram fusion=${ngram_opts[*]}")
    if [ "${#ngram_opts[@]}" -gt 0 ]; then decode_inputs+=(--file "n-gram LM=$lm"); fi
    if [ -f "$union/utt2accent" ]; then decode_inputs+=(--file "$union/utt2accent"); fi
}

# Decoding in stage 5's tail (stage 6 to follow, --sys_jobs 2 or more, the default --systems):
# stage 5's job list ends with one decoding per system of stage6_systems, so the slots its last
# systems leave free decode the source model and the systems already trained; stage 6 then finds
# them up to date. A decoding job waits for the decoding inputs (written by step 3's job when it
# still runs beside stage 5, else before stage 5's jobs) and for its system's training; when
# either failed, it ends without decoding.
decode_in_stage5() { [ "$stop_stage" -ge 6 ] && [ "$sys_jobs" -ge 2 ] && [ -z "$systems" ]; }
stage5_inputs_done=$cache_dir/stage5_decode_inputs.finished
stage5_write_decode_inputs() {  # writes the decoding inputs for stage 5's tail, then its marker
    test_sets=$(decode_sets)
    run_marked "$stage5_inputs_done" write_decode_inputs
}
stage5_trained() { echo "$cache_dir/stage5_trained.$1"; }   # stage5_trained SYSTEM: its marker (run_marked)
stage5_decode_job() {  # stage5_decode_job SYSTEM
    wait_for_marker "$stage5_inputs_done" || die "stage 5 cannot decode $1: the decoding inputs could not be written (see the ERROR lines above)"
    if [ "$1" != source ]; then
        wait_for_marker "$(stage5_trained "$1")" || die "stage 5 does not decode $1: its training failed"
    fi
    test_sets=$(decode_sets)
    decode_opts
    decode_system "$1"
}

decode_in_jobs() {  # decode_in_jobs DEC COMMAND...: --inference_nj jobs, job j taking batches j, j+nj, ...
    # (whole batches, so each batch is the one a single job decodes; and every job gets long and
    # short ones), then merged into DEC
    local dec=$1 split=$1/split bs keys j failed=0 threads pids=() shards=(); shift
    bs=$(grep -oE -- '--batch_size[= ]+[0-9]+' <<< "$decode_args" | tail -n 1 | grep -oE '[0-9]+$' || true)
    bs=${bs:-8}  # llm_asr_inference's default
    rm -rf "$split"; mkdir -p "$split"
    awk -v bs="$bs" -v nj="$inference_nj" -v d="$split" '{ print $1 > (d "/keys." (int((NR - 1) / bs) % nj + 1)) }' \
        "$union/$speech_file"
    threads=$(( ${OMP_NUM_THREADS:-$(nproc)} / inference_nj )); [ "$threads" -ge 1 ] || threads=1
    for keys in "$split"/keys.*; do
        j=${keys##*.}
        ( export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
          run_logged "$decode_cmd" "$split/decode.$j.log" "$@" --key_file "$keys" --output_dir "$split/out.$j" ) &
        pids+=("$!"); shards+=("$split/out.$j")
    done
    for j in "${pids[@]}"; do wait "$j" || failed=1; done
    [ "$failed" = 0 ] || die "a decoding job failed (logs: $split/decode.*.log)"
    run_logged "$decode_cmd" "$dec/merge.log" $python local/merge_decode_shards.py \
        --keys "$union/$speech_file" --out_dir "$dec" "${shards[@]}"
}
decode_system() {  # decode_system SYSTEM: all test sets with one system, then scoring
    local sys=$1 out dec d s f
    out=$exp_dir/$sys
    [ -f "$out/$decode_model" ] || die "$out/$decode_model does not exist: train $sys first (stage 4/5)"
    dec=$out/decode_union
    if ! up_to_date "$dec" "$sys decoding" remove --file "model=$out/$decode_model" --model_config "$out/config.yaml" \
            "${decode_inputs[@]}"; then
        local infer=($python -m espnet_hdmole.bin.llm_asr_inference \
            --asr_train_config "$out/config.yaml" --asr_model_file "$out/$decode_model" \
            --data_path_and_name_and_type "$union/$speech_file,speech,$speech_type" \
            "${accent_opts[@]}" "${stored_opts[@]}" "${ngram_opts[@]}" --ngpu "$decode_ngpu" $decode_args)
        if [ "$inference_nj" -le 1 ]; then
            run_logged "$decode_cmd" "$dec/decode.log" "${infer[@]}" --output_dir "$dec"
        else
            decode_in_jobs "$dec" "${infer[@]}"
        fi
        mark_done "$dec"
        # the per-set results of the decoding this one replaced: a set it did not decode again
        # (--test_sets of fewer sets) must not stay behind to mix with this decoding's in the tables
        for d in "$out"/decode_*; do
            [ -d "$d" ] && [ "$d" != "$dec" ] || continue
            case " $test_sets " in *" ${d#"$out"/decode_} "*) continue ;; esac  # (scored again below)
            rm -rf "$d"; log "  $sys: removed $d, made from the decoding this one replaced"
        done
    fi
    for s in $test_sets; do
        d=$out/decode_$s
        mkdir -p "$d/1best_recog"
        for f in "$dec"/1best_recog/*; do
            awk 'NR==FNR {keep[$1]; next} ($1 in keep)' "$feats/$s/text" "$f" > "$d/1best_recog/$(basename "$f")"
        done
        cp "$dec/rtf" "$d/rtf"
        run_logged "$decode_cmd" "$d/score.log" $python local/score_cer.py \
            --ref "$feats/$s/text" --hyp "$d/1best_recog/text" --out_dir "$d/score_cer" $score_args
    done
    log "  $sys: decoded ($(grep '^rtf' "$dec/rtf")) and scored"
}
