#!/usr/bin/env bash
# Wait up to SECONDS for a command started by start.sh NAME, then print the end of its log.
# Exit status: the command's own once it has ended; 3 while it still runs; 4 if it was never started.
#   usage: tools/detached/wait.sh NAME SECONDS [LINES]
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 NAME SECONDS [LINES]" >&2; exit 2; }
dir=${DETACHED_DIR:-/tmp/detached}/$1
[ -f "$dir/start" ] || { echo "$1 was never started here ($dir)" >&2; exit 4; }
deadline=$(( $(date +%s) + $2 ))
while [ ! -f "$dir/rc" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
tail -n "${3:-15}" "$dir/log"
now=$(cat "$dir/end" 2>/dev/null || date +%s)
echo "--- $1: $(( now - $(cat "$dir/start") )) s since its start"
if [ -f "$dir/rc" ]; then echo "--- ended, exit status $(cat "$dir/rc")"; exit "$(cat "$dir/rc")"; fi
echo "--- still running"; exit 3
