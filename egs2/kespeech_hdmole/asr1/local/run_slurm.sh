#!/usr/bin/env bash
# Usage: local/run_slurm.sh [SRUN OPTIONS...] LOGFILE COMMAND [ARGS...]
# Runs COMMAND as one Slurm job step (srun, which waits for it); output is appended to LOGFILE.
# Options before LOGFILE (those starting with '-') are passed to srun, e.g. --gres=gpu:1.
opts=()
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do opts+=("$1"); shift; done
if [ $# -lt 2 ]; then echo "usage: $0 [SRUN OPTIONS] LOGFILE COMMAND [ARGS...]" >&2; exit 2; fi
log=$1; shift
mkdir -p "$(dirname "$log")"
echo "# $*" >> "$log"
srun "${opts[@]}" --job-name="$(basename "$log" .log)" "$@" >> "$log" 2>&1
