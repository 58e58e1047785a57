# How the recipe runs its jobs. Each *_cmd is called as:  $cmd LOGFILE COMMAND [ARGS...]
#
# local (default): run on this machine, output to LOGFILE
train_cmd="local/run_local.sh"
decode_cmd="local/run_local.sh"
#
# Slurm: each job through srun (one task; ask for GPUs here and set --ngpu for training):
#   train_cmd="local/run_slurm.sh --partition=gpu --gres=gpu:1 --cpus-per-task=8 --time=24:00:00"
#   decode_cmd="local/run_slurm.sh --partition=cpu --cpus-per-task=4"
# Any other scheduler: a script that takes LOGFILE COMMAND [ARGS...], runs COMMAND there,
# writes its output to LOGFILE and exits with COMMAND's status.
