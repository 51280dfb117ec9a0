#!/bin/bash
# Shows: a many-task step. The batch step runs under allasrun (one keeper, one stage-in,
# one stage-out for the whole job); the two srun tasks share its token and rclone remote.
# Submit with:
#     allasrun sbatch many-tasks.sh
#SBATCH --job-name=tasks
#SBATCH --ntasks=2
#SBATCH --time=01:00:00
#SBATCH --output=tasks_%j.txt
#ALLAS stage-in  ${BUCKET}/dataset34/data2.txt    input/
#ALLAS stage-out parts/                           ${BUCKET}/tasks/%j/

mkdir -p parts
srun sh -c 'grep -c . input/data2.txt > parts/part-$SLURM_PROCID.txt && rclone lsf "allas:${BUCKET}/dataset34" >> parts/part-$SLURM_PROCID.txt'
