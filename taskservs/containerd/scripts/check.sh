#!/bin/sh
# Taskserv containerd, check: the service runs, answers on its socket, and
# uses the systemd cgroup driver for runc.
set -eu

CONFIG="${DROVER_ROOT:-/}"
CONFIG="${CONFIG%/}/etc/containerd/config.toml"

if ! systemctl is-active --quiet containerd; then
    echo "containerd: the service is not active" >&2
    exit 1
fi
if ! ctr version >/dev/null; then
    echo "containerd: the daemon does not answer on its socket" >&2
    exit 1
fi
if ! grep -q '^[[:space:]]*SystemdCgroup = true$' "$CONFIG"; then
    echo "containerd: $CONFIG does not set SystemdCgroup = true" >&2
    exit 1
fi
echo "containerd: ok"
