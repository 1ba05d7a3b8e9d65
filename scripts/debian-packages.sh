#!/bin/sh
# Installs the Debian packages the test suite uses, when running as root and
# they are missing. Without root it only says what is missing.
set -eu
need=""
command -v dot >/dev/null 2>&1 || need="$need graphviz"
command -v age-keygen >/dev/null 2>&1 || need="$need age"
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
# drover-testkit's hosts: sudo rights per host (a sudoers file of their own),
# network namespaces and veth pairs for the bastion topology (ip netns).
command -v sudo >/dev/null 2>&1 || need="$need sudo"
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need="$need iproute2"
# Peers of the fleet fan-out benchmark (drover-bench-fleet).
command -v pdsh >/dev/null 2>&1 || need="$need pdsh"
command -v parallel-ssh >/dev/null 2>&1 || need="$need pssh"
# promtool, shipped by the prometheus package: the conformance test checks
# /metrics with it. Installed without its recommends (node-exporter, a
# daemon the tests do not need).
slim=""
command -v promtool >/dev/null 2>&1 || slim="$slim prometheus"
# PostgreSQL's server programs (initdb, pg_ctl, postgres, psql): the tests
# and the benchmark of several orchestrators on one PostgreSQL start a
# throwaway cluster of their own, as an unprivileged user; the package's
# own cluster is not used (nor started: there is no init system here).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || slim="$slim postgresql"
# Headless Chromium and its WebDriver (chromedriver): the web dashboard's
# tests drive the page in a real browser (engine/cli/tests/dashboard.rs).
command -v chromium >/dev/null 2>&1 || slim="$slim chromium"
command -v chromedriver >/dev/null 2>&1 || slim="$slim chromium-driver"
[ -z "$need$slim" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages:$need$slim (install them as root: apt-get install$need$slim)" >&2
    exit 0
fi
apt-get update -qq
# shellcheck disable=SC2086
[ -z "$need" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
# shellcheck disable=SC2086
[ -z "$slim" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $slim >/dev/null
