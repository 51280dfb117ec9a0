#!/usr/bin/env bash
# Inside the demo: become a user who ran `allas-conf -k` (OS_* set, password in OS_PASSWORD),
# then run the job under allasrun. Needs MINI_ALLAS_ENV (set by stack/with-stack).
set -euo pipefail
# shellcheck disable=SC1090
source "$MINI_ALLAS_ENV"
state=$(dirname "$MINI_ALLAS_ENV")
export HOME="$state/home" && mkdir -p "$HOME"
echo "hello from the demo" > "$state/hello.txt"
echo
echo "== allasrun -- sh demo/job.sh   (tokens live ${MINI_ALLAS_TOKEN_TTL} s; the job runs ${DEMO_SECONDS:-210} s)"
unset OS_STORAGE_URL
logins() { grep 'POST /v3/auth/tokens' "$MINI_ALLAS_KEYSTONE_LOG" | grep -c "$1" || true; }
all_before=$(logins .) ours_before=$(logins '"allasrun/')
DEMO_SECONDS=${DEMO_SECONDS:-210} DEMO_FILE="$state/hello.txt" allasrun -- sh demo/job.sh
all=$(( $(logins .) - all_before )) ours=$(( $(logins '"allasrun/') - ours_before ))
echo "== Keystone token requests during the run: $all (allasrun's own: $ours; rclone's and swift's: $(( all - ours )))"
