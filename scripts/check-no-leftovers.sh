#!/bin/sh
# Run after the test suite: test fleets (sshd hosts in their own namespaces
# under temporary directories) must all be gone, also when a test failed.
# Only hosts in the temporary directories the tests make (tempfile's
# /tmp/.tmpXXXXXX and /var/tmp/.tmpXXXXXX) are considered: an operator's
# fleet, or a benchmark's, is not the suite's business.
#
# drover-testkit's hosts, agents and bastion networks are all the suite's:
# state directories drover-testkit-XXXXXX (in /dev/shm, /var/tmp or /tmp)
# and the sshd and ssh-agent processes using them, network namespaces
# dtk<slot>-*, veth interfaces dtk<slot>l<k>a/b, and the unreachable routes
# they add for 198.18.0.0/15; so are its PostgreSQL clusters (drover-pg-*).
status=0
report() { # what, list
    if [ -n "$2" ]; then
        echo "the test suite left $(echo "$2" | wc -l) $1:" >&2
        echo "$2" | head -n 10 >&2
        status=1
    fi
}
report "SSH host(s) running" \
    "$(pgrep -af 'sshd: .* -f (/var)?/tmp/\.tmp[^/]*/.*hosts/[^/]*/sshd_config' || true)"
report "drover-testkit host(s) running" \
    "$(pgrep -af 'sshd.* -f [^ ]*/drover-testkit-[^/ ]*/hosts/[^/ ]*/sshd_config' || true)"
report "drover-testkit ssh-agent(s) running" \
    "$(pgrep -af 'ssh-agent .*-a [^ ]*/drover-testkit-agent-' || true)"
report "drover-testkit PostgreSQL cluster(s) running" \
    "$(pgrep -af 'postgres .*-D [^ ]*/drover-pg-[^/ ]*/' || true)"
report "drover-testkit PostgreSQL director(y|ies)" \
    "$(ls -d /tmp/drover-pg-* /var/tmp/drover-pg-* 2>/dev/null || true)"
report "drover-testkit state director(y|ies)" \
    "$(ls -d /dev/shm/drover-testkit-* /var/tmp/drover-testkit-* /tmp/drover-testkit-* 2>/dev/null || true)"
if command -v ip >/dev/null 2>&1; then
    report "drover-testkit network namespace(s)" \
        "$(ip netns list 2>/dev/null | grep -E '^dtk[0-9]+-' || true)"
    report "drover-testkit network interface(s)" \
        "$(ip -o link show 2>/dev/null | grep -E '^[0-9]+: dtk[0-9]+l[0-9]+[ab][@:]' || true)"
    report "drover-testkit route(s)" \
        "$(ip -4 route show type unreachable 2>/dev/null | grep -E '^unreachable 198\.1[89]\.' || true)"
fi
[ "$status" -eq 0 ] && echo "no test hosts left running"
exit "$status"
