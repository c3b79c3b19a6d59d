# Sourced by the sbatch templates (submitted from the repository root): a preemptible job.
#   run_preemptible srun --kill-on-bad-exit=1 bash -c 'trap "" USR1; accelerate launch ...' launch "$@"
# - srun runs in the background and this shell waits for it: the USR1 that `#SBATCH --signal=B:USR1@300` sends this
#   shell runs its trap at once (a trap does not fire while a foreground srun runs);
# - the trap sends USR1 to the processes of the job's steps (`scancel --signal`, which leaves this shell out): the
#   ranks (ftpeft's --preemption_signals) save a checkpoint, every rank at the same step, and exit 75. Each node's bash
#   ignores USR1 (so srun's task lives on); its torchrun agent would die of it, so PET_SIGNALS_TO_HANDLE makes it
#   forward USR1 to its ranks and TORCH_ELASTIC_SHUTDOWN_TIMEOUT makes it wait for them that long before SIGKILL;
# - once srun is done, the job is requeued (`scontrol requeue`, allowed by `#SBATCH --requeue`) only when the recipe
#   stopped at a checkpoint: exit 75, or OUTPUT_DIR/.preempted (accelerate's launcher turns the 75 into 1). The rerun
#   (SLURM_RESTART_COUNT > 0) gets --resume_from_checkpoint auto, which starts afresh if no checkpoint was saved yet.
# OUTPUT_DIR is the recipe's --output_dir (given on the command line; set OUTPUT_DIR when a --config file sets it).
PREEMPTED_EXIT=75
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240} # seconds; under --signal's 300

recipe_output_dir() { # the --output_dir among the arguments, else OUTPUT_DIR, else the recipe's default
    local dir=${OUTPUT_DIR:-outputs/$(basename "${RECIPE:-recipes/bert_cls.py}" .py)}
    while [ $# -gt 0 ]; do
        case $1 in
        --output_dir | --output-dir)
            dir=${2:-$dir}
            shift
            ;;
        --output_dir=* | --output-dir=*) dir=${1#*=} ;;
        esac
        shift
    done
    printf '%s\n' "$dir"
}

forward_to_ranks() {
    echo "preemption: USR1 to the ranks of job $SLURM_JOB_ID" >&2
    scancel --signal=USR1 "$SLURM_JOB_ID" || true
}

run_preemptible() { # run_preemptible COMMAND...: COMMAND (srun) in the background, the trap, the requeue
    if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
        set -- "$@" --resume_from_checkpoint auto
    fi
    local output_dir pid status
    output_dir=$(recipe_output_dir "$@")
    trap forward_to_ranks USR1
    "$@" &
    pid=$!
    while :; do
        wait "$pid" && status=0 || status=$?
        kill -0 "$pid" 2>/dev/null || break # wait returned for the trap: srun still runs
    done
    trap - USR1
    if [ "$status" -eq "$PREEMPTED_EXIT" ] || [ -f "$output_dir/.preempted" ]; then
        echo "preemption: stopped at a checkpoint ($output_dir/.preempted); requeueing job $SLURM_JOB_ID" >&2
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$status"
}
