#!/bin/sh
# Run after the test suite: test fleets (sshd hosts in their own namespaces
# under temporary directories) must all be gone, also when a test failed.
# Only hosts in the temporary directories the tests make (tempfile's
# /tmp/.tmpXXXXXX and /var/tmp/.tmpXXXXXX) are considered: an operator's
# fleet, or a benchmark's, is not the suite's business.
left=$(pgrep -af 'sshd: .* -f (/var)?/tmp/\.tmp[^/]*/.*hosts/[^/]*/sshd_config' || true)
if [ -n "$left" ]; then
    echo "the test suite left $(echo "$left" | wc -l) SSH host(s) running:" >&2
    echo "$left" | head -n 10 >&2
    exit 1
fi
echo "no test hosts left running"
