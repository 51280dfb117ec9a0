#!/bin/bash
# Shows: a job that would run past its time limit. allasrun reads the job's end time,
# signals the command (SIGTERM) a lead before it (at most half the job's time), waits a grace
# period, and uploads what exists, before Slurm's own kill. Submit with:
#     allasrun sbatch deadline.sh
#SBATCH --job-name=deadline
#SBATCH --time=00:01:00
#SBATCH --output=deadline_%j.txt
#ALLAS stage-out checkpoints/                     ${BUCKET}/deadline/%j/
#ALLAS option    stage-out-lead=40 grace=5

mkdir -p checkpoints
step=0
while true; do   # a simulation that never finishes by itself
  step=$((step + 1))
  echo "state after step $step" > checkpoints/latest.txt
  sleep 1
done
