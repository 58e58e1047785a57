#!/usr/bin/env bash
# Usage: local/run_local.sh LOGFILE COMMAND [ARGS...]
# Runs COMMAND on this machine; stdout+stderr are appended to LOGFILE (a resumed job keeps
# the log of its earlier runs), framed by the command line, start/end time and exit status.
# Exits with COMMAND's status.
if [ $# -lt 2 ]; then echo "usage: $0 LOGFILE COMMAND [ARGS...]" >&2; exit 2; fi
log=$1; shift
mkdir -p "$(dirname "$log")"
{
  echo "# $*"
  echo "# started at $(date '+%Y-%m-%dT%H:%M:%S')"
} >> "$log"
start=$(date +%s)
"$@" >> "$log" 2>&1
rc=$?
echo "# ended at $(date '+%Y-%m-%dT%H:%M:%S') (elapsed $(( $(date +%s) - start )) s) with status $rc" >> "$log"
exit $rc
