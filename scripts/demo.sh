#!/bin/sh
# The main job (`make run`): the quickstart for real on this machine, on the
# embedded state store: three local SSH hosts (sshd in their own namespaces,
# reached over SSH), hostinfo and webhello installed and health-checked, the
# pages fetched, the hosts pinged, then everything rolled back (the hosts
# deleted) so nothing is left running.
set -eu
drover=${DROVER:-target/release/drover}

echo "== drover plan workflows/wuji.k (the full deployment, planned)"
"$drover" plan workflows/wuji.k

echo
echo "== drover run workflows/quickstart.k"
"$drover" run workflows/quickstart.k
run_id=$("$drover" runs | awk 'NR == 2 { print $1 }')

echo
echo "== the three web services answer"
for addr in 127.0.10.1 127.0.10.2 127.0.10.3; do
    python3 -c "import sys, urllib.request; print(sys.argv[1], '->', urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().split('<title>')[1].split('</title>')[0])" "http://$addr:18080/"
done

echo
echo "== drover ping workflows/quickstart.k (SSH, host keys verified)"
"$drover" ping workflows/quickstart.k

echo
echo "== drover rollback $run_id"
"$drover" rollback "$run_id" | tail -n 2
