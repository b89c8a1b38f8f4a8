#!/usr/bin/env bash
# NVIDIA MPS (Multi-Process Service) for this user: with its control daemon running, the CUDA
# processes on the GPU share one context, so the small kernels of several jobs (three recipe SAC
# runs, say) can run side by side instead of taking turns in time slices. Nothing in seemrl needs
# it and it changes no result; it only changes how jobs on one GPU share it. The daemon and its
# clients meet at the default pipe directory (/tmp/nvidia-mps) unless CUDA_MPS_PIPE_DIRECTORY says
# otherwise; start it before the jobs, stop it after them.
#   usage: tools/mps.sh start|stop|status
set -euo pipefail
pipe=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}
logs=${CUDA_MPS_LOG_DIRECTORY:-/tmp/nvidia-mps-log}
export CUDA_MPS_PIPE_DIRECTORY=$pipe CUDA_MPS_LOG_DIRECTORY=$logs
# whether a daemon answers (a stopped one can leave its pipes behind)
answers() { echo get_server_list | timeout 10 nvidia-cuda-mps-control > /dev/null 2>&1; }
case ${1:-} in
    start)
        command -v nvidia-cuda-mps-control > /dev/null || { echo "mps.sh: nvidia-cuda-mps-control is not installed" >&2; exit 1; }
        answers && { echo "mps.sh: a daemon already answers in $pipe"; exit 0; }
        mkdir -p "$pipe" "$logs"
        nvidia-cuda-mps-control -d
        for _ in 1 2 3 4 5 6 7 8 9 10; do answers && break; sleep 0.5; done
        answers || { echo "mps.sh: the daemon did not start (see $logs/control.log)" >&2; exit 1; }
        echo "MPS daemon started (pipes $pipe, logs $logs)";;
    stop)
        command -v nvidia-cuda-mps-control > /dev/null && answers || { echo "mps.sh: no MPS daemon answers in $pipe"; exit 0; }
        echo quit | nvidia-cuda-mps-control
        echo "MPS daemon stopped";;
    status)
        if command -v nvidia-cuda-mps-control > /dev/null && answers; then
            echo "MPS daemon answers in $pipe; servers:"; echo get_server_list | nvidia-cuda-mps-control
        else echo "no MPS daemon answers in $pipe"; fi;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2;;
esac
