#!/bin/bash
# Shows: an array job in which every task stages in its own slice (%a) and uploads its results
# under the array's id (%A_%a). Submit with:
#     allasrun sbatch array.sh
#SBATCH --job-name=slices
#SBATCH --array=1-3
#SBATCH --time=01:00:00
#SBATCH --output=slices_%A_%a.txt
#ALLAS stage-in  ${BUCKET}/slices/%a/             slice-%a/
#ALLAS stage-out out-%a/                          ${BUCKET}/slices-out/%A_%a/

# The tasks of an array share the submit directory: each works in its own (%a) folders, or one
# task would upload a file another is rewriting.
task=$SLURM_ARRAY_TASK_ID
mkdir -p "out-$task"
wc -l < "slice-$task/input.txt" > "out-$task/lines.txt"
