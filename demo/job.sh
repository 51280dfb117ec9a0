#!/bin/sh
# The demo job: what a user's batch script does, with no allas-conf line anywhere.
# rclone ($RCLONE_CONFIG) and swift ($ST_AUTH) re-authenticate at allasrun's token service on
# 127.0.0.1 whenever their token expires; Keystone sees only allasrun's own renewals.
set -eu
rclone mkdir allas:demo-bucket
rclone copy "$DEMO_FILE" allas:demo-bucket/
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$DEMO_SECONDS" ]; do
  objects=$(rclone lsf allas:demo-bucket | wc -l)
  listed=$(swift list demo-bucket | wc -l)
  expires=$(sed -n 's/^# token expires //p' "$ALLASRUN_ENV_FILE")
  echo "job: t=$(( $(date +%s) - start ))s rclone sees $objects object(s), swift sees $listed; token in files expires $expires"
  sleep 15
done
echo "job: done, every call succeeded"
