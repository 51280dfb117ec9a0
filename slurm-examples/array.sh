#!/bin/bash
# Shows: an array job in which every task stages in its own slice (%a) and uploads its results
# under the array's id (%A_%a). Submit with:
#     allasrun sbatch array.sh
#SBATCH --job-name=slices
#SBATCH --array=1-3
#SBATCH --time=01:00:00
#SBATCH --output=slices_%A_%a.txt
#ALLAS stage-in  ${BUCKET}/slices/%a/             slice/
#ALLAS stage-out out/                             ${BUCKET}/slices-out/%A_%a/

mkdir -p out
wc -l < slice/input.txt > out/lines.txt
