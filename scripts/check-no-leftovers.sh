#!/bin/sh
# Run after the test suite: test fleets (sshd hosts in their own namespaces
# under temporary directories) must all be gone, also when a test failed.
# Only hosts under /tmp and /var/tmp are considered: an operator's own
# fleet (under the data directory) is not the suite's business.
left=$(pgrep -af 'sshd: .* -f (/var)?/tmp/.*/hosts/[^/]*/sshd_config' || true)
if [ -n "$left" ]; then
    echo "the test suite left $(echo "$left" | wc -l) SSH host(s) running:" >&2
    echo "$left" | head -n 10 >&2
    exit 1
fi
echo "no test hosts left running"
