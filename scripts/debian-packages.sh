#!/bin/sh
# Installs the Debian packages the test suite uses, when running as root and
# they are missing. Without root it only says what is missing.
set -eu
need=""
command -v dot >/dev/null 2>&1 || need="$need graphviz"
command -v age-keygen >/dev/null 2>&1 || need="$need age"
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
# Peers of the fleet fan-out benchmark (drover-bench-fleet).
command -v pdsh >/dev/null 2>&1 || need="$need pdsh"
command -v parallel-ssh >/dev/null 2>&1 || need="$need pssh"
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages:$need (install them as root: apt-get install$need)" >&2
    exit 0
fi
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
