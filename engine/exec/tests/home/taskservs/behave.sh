#!/bin/sh
# The deterministic test taskserv: every script of the test taskservs is a
# link to this file, and what it does is read from control files, so a test
# says in advance how each (action, taskserv, server) behaves:
#
#   $DROVER_VAR_CONTROL/<action>.<taskserv>@<server>   (most specific)
#   $DROVER_VAR_CONTROL/<action>.<taskserv>
#   $DROVER_VAR_CONTROL/<action>
#
# holding one of: (absent) succeed | fail | fail N (fail the first N
# executions, then succeed) | sleep SECONDS | lines N (print N numbered
# lines, then succeed) | env (write the script's environment to
# $DROVER_VAR_CONTROL/env.<taskserv>@<server>, then succeed) | hang (start a
# child and wait forever; pids written for the test to check).
#
# Every execution appends a line to $DROVER_VAR_CONTROL/executions.log:
#   <result> <action> <taskserv>@<server> <attempt> <idempotency key> <start ns> <end ns>
# and the effect of install/remove/update/rollback is a marker file under
# $DROVER_ROOT/installed/, so tests assert on side effects.
set -eu
action=$(basename "$0" .sh)
ctl=${DROVER_VAR_CONTROL:?DROVER_VAR_CONTROL must name the control directory}
me="${DROVER_TASKSERV}@${DROVER_SERVER}"
start=$(date +%s%N)

record() {
    echo "$1 $action $me ${DROVER_ATTEMPT:-0} ${DROVER_IDEMPOTENCY_KEY:-none} $start $(date +%s%N)" >>"$ctl/executions.log"
}

mode=""
for f in "$ctl/$action.$me" "$ctl/$action.$DROVER_TASKSERV" "$ctl/$action"; do
    if [ -f "$f" ]; then
        mode=$(cat "$f")
        break
    fi
done

case "$mode" in
"") ;;
fail)
    record fail
    echo "$me: $action told to fail" >&2
    exit 1
    ;;
"fail "*)
    n=${mode#fail }
    counter="$ctl/count.$action.$me"
    c=$(cat "$counter" 2>/dev/null || echo 0)
    c=$((c + 1))
    echo "$c" >"$counter"
    if [ "$c" -le "$n" ]; then
        record fail
        echo "$me: $action failing ($c of $n)" >&2
        exit 1
    fi
    ;;
"sleep "*)
    sleep "${mode#sleep }"
    ;;
env)
    env >"$ctl/env.$me"
    ;;
"lines "*)
    i=1
    while [ "$i" -le "${mode#lines }" ]; do
        echo "$me line $i"
        i=$((i + 1))
    done
    ;;
hang)
    sleep 1000 &
    child=$!
    # Recorded before the pids are written: a test that sees the pids
    # (and then kills the group) finds the record too.
    record hang
    echo $$ >"$ctl/hang.$me.pid"
    echo $child >"$ctl/hang.$me.child"
    wait
    ;;
*)
    echo "unknown mode '$mode' in control files for $action $me" >&2
    exit 2
    ;;
esac

root=${DROVER_ROOT%/}
mkdir -p "$root/installed"
case "$action" in
install) echo "$DROVER_IDEMPOTENCY_KEY" >"$root/installed/$DROVER_TASKSERV" ;;
remove) rm -f "$root/installed/$DROVER_TASKSERV" ;;
update) echo "updated $DROVER_IDEMPOTENCY_KEY" >>"$root/installed/$DROVER_TASKSERV" ;;
rollback) echo "rolled back" >>"$root/installed/$DROVER_TASKSERV" ;;
check) test -f "$root/installed/$DROVER_TASKSERV" ;;
esac
echo "$me: $action ok"
record ok
