# Stage 6 of hdmole.sh: decoding and scoring of one system. hdmole.sh sources this file; the
# functions read the settings stage 6 makes before it calls them (the union of the test sets in
# $union, accent_opts, stored_opts, ngram_opts, decode_inputs), and stage 6 runs decode_system
# for every system through run_jobs, sys_jobs at a time.
#
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
