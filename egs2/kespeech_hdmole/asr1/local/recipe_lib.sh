# Shell functions of the recipe (hdmole.sh sources this file): logging, running logged commands,
# parallel jobs, reading a YAML's model_conf, stage timing and the done-markers that know their
# inputs. They read hdmole.sh's settings (verbose, sys_jobs, python, exp_dir, cache_dir) when called.

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
die() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ERROR: $*" >&2; exit 1; }
last_run() {  # last_run LOGFILE: the output of the latest command in a log (cmd.sh appends)
    awk '/^# started at /{buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}' "$1"
}
run_logged() {  # run_logged CMD_VAR LOGFILE COMMAND...: run through cmd.sh; on failure the tool's
    local runner=$1 logf=$2; shift 2  # own ERROR line (a user error), else the log's last lines
    if ! ${runner} "$logf" "$@"; then
        if [ "$verbose" != true ] && last_run "$logf" | grep -q '^ERROR: '; then
            die "$(last_run "$logf" | grep '^ERROR: ' | tail -n 1 | sed 's/^ERROR: //') (log: $logf)"
        fi
        echo "---- last lines of $logf ----" >&2; tail -n 30 "$logf" >&2
        die "command failed, see $logf"
    fi
}
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

# run_jobs FUNCTION ARG...: FUNCTION ARG for every ARG, sys_jobs at a time, each in a subshell with
# its share of the CPU threads; fails (after all have ended) if any failed. Background jobs of this
# shell listed in busy_pids (e.g. stage 4's step 3, still training) hold a slot each until they end,
# and count as failed jobs if they fail; the list is emptied. (A slot frees when fewer jobs run; the
# exit status of each job is collected by its pid at the end: wait -n misses a job that ended while
# this shell ran something else.)
busy_pids=()
run_jobs() {
    local fn=$1 failed=0 threads jobs=$sys_jobs pids=("${busy_pids[@]}") p; shift
    busy_pids=()
    [ $(( $# + ${#pids[@]} )) -lt "$jobs" ] && jobs=$(( $# + ${#pids[@]} ))
    threads=$(( $(nproc) / (jobs > 0 ? jobs : 1) )); [ "$threads" -ge 1 ] || threads=1
    for arg in "$@"; do
        if [ "$jobs" -gt 1 ]; then
            while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
            ( export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; "$fn" "$arg" ) &
            pids+=("$!")
        else
            ( "$fn" "$arg" ) || failed=1
        fi
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [ "$failed" = 0 ] || die "$fn failed for at least one of: $* (see the ERROR lines above)"
}

# Markers between jobs that run side by side (a job waits for another's output):
#   run_marked MARKER COMMAND...  runs COMMAND in a subshell, then touches MARKER, or MARKER.failed
#                                 (and fails) when it failed
#   wait_for_marker MARKER        waits until MARKER or MARKER.failed exists; fails in the latter case
run_marked() {
    local marker=$1; shift
    if ( "$@" ); then touch "$marker"; else touch "$marker.failed"; return 1; fi
}
wait_for_marker() {
    while [ ! -f "$1" ]; do
        [ ! -f "$1.failed" ] || return 1
        sleep 2
    done
}

# model_conf.<key> of a training YAML, or a default when the key is absent
model_conf_get() {
    $python -c "import sys, yaml; mc = (yaml.safe_load(open(sys.argv[1], encoding='utf-8')) or {}).get('model_conf') or {}; print(mc.get(sys.argv[2], sys.argv[3]))" "$1" "$2" "$3" \
        || die "cannot read model_conf.$2 from $1"
}
# merge_config ARG...: local/merge_config.py ARG... (a training config from YAMLs); a bad YAML stops
# the recipe with the tool's ERROR line (checked here: functions that run_marked runs ignore set -e)
merge_config() {
    local msg
    msg=$($python local/merge_config.py "$@" 2>&1) || die "$(tail -n 1 <<< "$msg" | sed 's/^ERROR: //') (local/merge_config.py $*)"
}
system_name() { local b; b=$(basename "$1" .yaml); b=${b#finetune_}; echo "${b#train_}"; }
# check_system_names CONFIG...: a system trains into $exp_dir/<its name> (system_name: the YAML's
# file name), so no name may be a directory other stages write there, repeat another's, or look
# like another seed's run (<system>_seed<k>) or a superseded one (<dir>.stale-<time>)
recipe_exp_dirs="source source_encoder source_encoder_tone accent_id llm ngram encoder_out decode_inputs logs plots tune_dev tune_dev_proj"
check_system_names() {
    local c n; local -A first=()
    for c in "$@"; do
        n=$(system_name "$c")
        case " $recipe_exp_dirs " in *" $n "*)
            die "training config $c names the system '$n' (after its file name), but $exp_dir/$n holds the recipe's own $n: rename the file" ;; esac
        [[ ! $n =~ _seed[0-9]+$ ]] || die "training config $c names the system '$n', the name of another system's run with --train_seeds: rename the file"
        [[ $n != *.stale-* ]] || die "training config $c names the system '$n', a name the recipe gives superseded runs: rename the file"
        [ -z "${first[$n]+set}" ] || die "training configs ${first[$n]} and $c both name the system '$n' (after their file names), which would share $exp_dir/$n: list it once, or rename one"
        first[$n]=$c
    done
}
stage_start() { STAGE_T0=$(date +%s); log "stage $1: $2"; }
stage_end() { log "stage $1 done in $(( $(date +%s) - STAGE_T0 )) s"; echo "$1 $(( $(date +%s) - STAGE_T0 ))" >> "${exp_dir}/stage_times.txt"; }

# Done-markers that know their inputs (local/stage_marker.py). up_to_date DIR WHAT OLD INPUTS...:
#   returns 0 when DIR/.done records the same INPUTS (logs "WHAT: done, skipped", and when other
#   code made it, which code and what changed since: a code change alone does not redo it); else gets DIR
#   ready for a run (returns 1): a run of other inputs is moved aside (OLD=keep: DIR.stale-<time>)
#   or removed (OLD=remove: derived outputs such as decodings), and the log says why.
#   mark_done DIR: the run in DIR has finished.
up_to_date() {
    local out=$1 what=$2 old=$3; shift 3
    local pending verdict aside
    pending=$cache_dir/inputs/$(echo "$out" | tr '/' '%').json
    mkdir -p "$cache_dir/inputs"
    verdict=$($python local/stage_marker.py "$out" --write "$pending" "$@" 2> "$pending.err") \
        || die "$(sed 's/^ERROR: //' "$pending.err" | tail -n 1)"
    case $verdict in
        done) log "  $what: done, skipped"; return 0 ;;
        done:*) log "  $what: done, skipped, but ${verdict#done: }: remove $out to redo it with this code"
            return 0 ;;
        new) ;;
        resume) log "  $what: resuming the unfinished run in $out (same inputs)" ;;
        stale:*)
            if [ "$old" = keep ]; then
                aside=$out.stale-$(date +%Y%m%d-%H%M%S); mv "$out" "$aside"
                log "  $what: redone, because ${verdict#stale: } (the previous run is kept in $aside)"
            else
                rm -rf "$out"; log "  $what: redone, because ${verdict#stale: }"
            fi ;;
        *) die "local/stage_marker.py said '$verdict' for $out" ;;
    esac
    mkdir -p "$out"; cp "$pending" "$out/.inputs"
    return 1
}
mark_done() { cp "$1/.inputs" "$1/.done"; }
shell_words() {  # shell_words ARG...: one string that Python's shlex.split reads back as these arguments (in any locale, unlike printf %q)
    local a out=()
    for a in "$@"; do out+=("'${a//\'/\'\\\'\'}'"); done
    echo "${out[*]}"
}
