#!/usr/bin/env bash
# Start a command detached, in its own process session, so that it outlives the shell (an SSH
# session, or a remote call limited to a few minutes) that started it. Its output goes to
# $DETACHED_DIR/NAME/log; its exit status to .../rc; its start and end (epoch seconds) to .../start
# and .../end. wait.sh NAME SECONDS follows it.
#   usage: tools/detached/start.sh NAME COMMAND [ARGS...]
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 NAME COMMAND [ARGS...]" >&2; exit 2; }
name=$1; shift
dir=${DETACHED_DIR:-/tmp/detached}/$name
mkdir -p "$dir"
if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && [ ! -f "$dir/rc" ]; then
    echo "$name is already running (pid $(cat "$dir/pid"))" >&2; exit 1
fi
rm -f "$dir/rc" "$dir/end"
date +%s > "$dir/start"
# bash -c's $0 is the folder, "$@" the command
setsid bash -c 'echo $$ > "$0/pid"; "$@" > "$0/log" 2>&1; echo $? > "$0/rc"; date +%s > "$0/end"' \
    "$dir" "$@" < /dev/null > /dev/null 2>&1 &
echo "started $name: $*  (log $dir/log)"
