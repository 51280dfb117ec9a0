#!/bin/bash
# Shows: the rclone version of CSC's example job, minus both `source .../allas_conf -f -k`
# lines. `allasrun sbatch` runs the batch step under allasrun, which keeps the rclone remote
# `allas:` valid for as long as the job runs, hour 1 or hour 60. Submit with:
#     allasrun sbatch rclone-style.sh
#SBATCH --job-name=my_allas_job
#SBATCH --account=project_2000178
#SBATCH --time=48:00:00
#SBATCH --mem-per-cpu=1G
#SBATCH --partition=small
#SBATCH --output=allas_output_%j.txt
#SBATCH --error=allas_errors_%j.txt

# download input data
rclone copy "allas:${BUCKET}/dataset34/data2.txt" dataset34/

# do the actual analysis
mkdir -p results34
sort dataset34/data2.txt > results34/sorted.txt

# upload results to allas
rclone copy results34 "allas:${BUCKET}/rclone-results34/${SLURM_JOB_ID}/"
