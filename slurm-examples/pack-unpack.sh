#!/bin/bash
# Shows: a-put's objects without the a-commands. `--unpack` streams dataset34.tar (what
# `a-put dataset34` stored; .tar.zst and .zst too) into the working directory, checked against
# its MD5 and the file list in its _ameta; `--pack --compress` sends results34/ as one
# results34.tar.zst with an _ameta in a-put's format, which `a-get` restores as it is.
#     allasrun sbatch pack-unpack.sh
#SBATCH --job-name=pack_unpack
#SBATCH --account=project_2000178
#SBATCH --time=12:00:00
#SBATCH --partition=small
#SBATCH --output=pack_%j.txt
#ALLAS stage-in  ${BUCKET}/dataset34.tar  ./  --unpack
#ALLAS stage-out results34/                ${BUCKET}/packed/%j/  --pack --compress

mkdir -p results34
sort dataset34/data2.txt > results34/sorted.txt
