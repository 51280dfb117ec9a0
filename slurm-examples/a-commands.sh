#!/bin/bash
# Shows: CSC's a-commands in a batch job under allasrun. a-get fetches, a-put stores, as on
# CSC's "Using Allas in batch jobs" page, but with no allas-conf line and no password in the job:
# allasrun keeps the token they use (its rclone remote allas:) valid however long the job runs.
# Submit from a shell where OS_PASSWORD is set (allas-conf -k), with the a-commands on PATH
# (module load allas), with:
#     allasrun sbatch a-commands.sh
#SBATCH --job-name=my_allas_job
#SBATCH --account=project_2000178
#SBATCH --time=48:00:00
#SBATCH --mem-per-cpu=1G
#SBATCH --partition=small
#SBATCH --output=allas_output_%j.txt
#SBATCH --error=allas_errors_%j.txt
set -euo pipefail

# dataset34.tar is what `a-put dataset34` stored: a-get unpacks it into dataset34/
a-get "${BUCKET}/dataset34.tar"

# do the analysis (sort stands in for my_analysis_command)
mkdir -p results34
sort dataset34/data2.txt > results34/sorted.txt

# one object, results34-<job id>.tar, with the _ameta that a-list and a-info read
a-put -b "${BUCKET}" -o "results34-${SLURM_JOB_ID}" results34
