#!/bin/sh
# A stand-in agent: takes a few "turns", reporting each on the report
# descriptor reeve provides, then prints a result. Exits non-zero when the
# payload asks it to fail, to show retries.
turns=${TURNS:-5}
i=1
while [ "$i" -le "$turns" ]; do
  echo "turn $i: thinking (job $REEVE_JOB_ID, attempt $REEVE_ATTEMPT, epoch $REEVE_EPOCH)"
  echo "{\"turns\": $i, \"progress\": \"turn $i of $turns\"}" >&"${REEVE_REPORT_FD:-3}"
  sleep 1
  i=$((i + 1))
done
case "$REEVE_PAYLOAD" in
  *'"fail":true'*) echo "asked to fail" >&2; exit 3 ;;
esac
echo '{"result": {"summary": "done"}}' >&"${REEVE_REPORT_FD:-3}"
