"""The promise itself: a job outliving four tokens sees no failure from rclone or swift.

Slow by nature: 4 lifetimes of the stack's 90-second token, a little over six minutes.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.stack.stackutil import Stack, allasrun, make_bucket, user_env

JOB = """
end=$(( $(date +%s) + DURATION ))
ok=0; failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  if rclone lsf allas:long-bucket >/dev/null 2>>"$ERRORS"; then ok=$((ok+1)); else failed=$((failed+1)); fi
  if ( . "$ALLASRUN_ENV_FILE" && swift list long-bucket >/dev/null 2>>"$ERRORS" ); then
    ok=$((ok+1)); else failed=$((failed+1)); fi
  sleep 2
done
echo "ok=$ok failed=$failed"
"""


def test_job_outliving_four_tokens_never_fails(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "long-bucket")
    duration = 4 * stack.ttl + 10
    errors = tmp_path / "errors.txt"
    env = user_env(stack, home, DURATION=str(duration), ERRORS=str(errors))
    result = allasrun(["--", "sh", "-c", JOB], env, timeout=duration + 120)
    assert result.returncode == 0, result.stderr
    counts = dict(re.findall(r"(ok|failed)=(\d+)", result.stdout))
    assert counts["failed"] == "0", errors.read_text()
    calls = int(counts["ok"])
    assert calls >= duration // 3  # two calls every ~2-3 s
    renewals = re.findall(r"renewed token \((\d+)\)", result.stderr)
    assert len(renewals) >= 3, result.stderr
    assert "renewal attempt" not in result.stderr
