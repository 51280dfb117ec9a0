#!/bin/bash
# Shows: the a-get / a-put job from CSC's "Using Allas in batch jobs" page, with allasrun.
# Inputs and results are declared, not fetched by hand; no allas-conf line, and no password
# travels into the job. Submit from a shell where OS_PASSWORD is set (allas-conf -k) with:
#     allasrun sbatch a-commands.sh
#SBATCH --job-name=my_allas_job
#SBATCH --account=project_2000178
#SBATCH --time=48:00:00
#SBATCH --mem-per-cpu=1G
#SBATCH --partition=small
#SBATCH --output=allas_output_%j.txt
#SBATCH --error=allas_errors_%j.txt
#ALLAS stage-in  ${BUCKET}/dataset34/data2.txt   dataset34/
#ALLAS stage-out results34/                      ${BUCKET}/results34/%j/

# do the analysis (sort stands in for my_analysis_command)
mkdir -p results34
sort dataset34/data2.txt > results34/sorted.txt
