#!/bin/bash
# Shows: a job written the Roihu way, where S3 is Allas's default protocol. `allas-conf` (S3 mode)
# left your keys in ~/.s3cfg and ~/.aws/credentials: no password, no token to keep alive, nothing
# to hand over. Inputs and results go over S3 (protocol=s3; with only S3 keys at hand allasrun
# would choose S3 for these bare addresses anyway), and the command's S3 clients (rclone's
# s3allas:, aws, s3cmd) get the keys from the run's own files. Submit with:
#     allasrun sbatch s3-roihu.sh
#SBATCH --job-name=s3_job
#SBATCH --account=project_2000178
#SBATCH --time=01:00:00
#SBATCH --mem-per-cpu=1G
#SBATCH --output=s3_output_%j.txt
#ALLAS stage-in  ${BUCKET}/dataset34/data2.txt   dataset34/
#ALLAS stage-out results34/                      ${BUCKET}/s3-results34/%j/
#ALLAS option    protocol=s3

mkdir -p results34
sort dataset34/data2.txt > results34/sorted.txt
# any S3 client works inside the job, with the run's keys: list what came in
rclone lsf "s3allas:${BUCKET}/dataset34/" > results34/listing.txt
