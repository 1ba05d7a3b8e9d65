#!/bin/sh
# Taskserv kubernetes, install: kubeadm, kubelet and kubectl from the
# Kubernetes project's apt repository (pkgs.k8s.io), held at the chosen
# version, then:
#   - on the server named by DROVER_VAR_CONTROL_PLANE: kubeadm init;
#   - on the other servers named in DROVER_VAR_CONTROL_PLANE_NODES: kubeadm
#     join as further control planes (HA, stacked etcd);
#   - on every other server: kubeadm join as a worker.
# Joins need DROVER_VAR_CONTROL_PLANE_ADDRESS, DROVER_VAR_JOIN_TOKEN and
# DROVER_VAR_CA_CERT_HASH (and DROVER_VAR_CERTIFICATE_KEY for control
# planes); these come from the workflow's secrets. Secrets reach kubeadm in a
# config file of mode 600 under /run, never on a command line, and kubeadm is
# told not to print them.
#
# Idempotent: a node that is already initialised or joined (drover's marker,
# or a working kubelet and API) is left as it is; an unfinished kubeadm run
# (a crash in the middle) is reset and done again.
set -eu
# No pathname expansion: apt version patterns like kubeadm=1.31.2-* are words.
set -f

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
: "${DROVER_SERVER:?DROVER_SERVER is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "kubernetes: installs packages and runs the kubelet, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

fail() { echo "kubernetes: $*" >&2; exit 2; }

VERSION="${DROVER_VAR_KUBERNETES_VERSION:-1.31}"
VERSION="${VERSION#v}"
CONTROL_PLANE="${DROVER_VAR_CONTROL_PLANE:-}"
CONTROL_PLANE_NODES="${DROVER_VAR_CONTROL_PLANE_NODES:-$CONTROL_PLANE}"
ENDPOINT="${DROVER_VAR_CONTROL_PLANE_ADDRESS:-}"
POD_CIDR="${DROVER_VAR_POD_CIDR:-10.244.0.0/16}"
SERVICE_CIDR="${DROVER_VAR_SERVICE_CIDR:-10.96.0.0/12}"
TOKEN="${DROVER_VAR_JOIN_TOKEN:-}"
TOKEN_TTL="${DROVER_VAR_JOIN_TOKEN_TTL:-24h0m0s}"
CA_HASH="${DROVER_VAR_CA_CERT_HASH:-}"
CERT_KEY="${DROVER_VAR_CERTIFICATE_KEY:-}"
CA_CERT="${DROVER_VAR_CA_CERT:-}"
CA_KEY="${DROVER_VAR_CA_KEY:-}"

STATE="$R/var/lib/drover/kubernetes"
KEYRING="$R/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
SOURCES="$R/etc/apt/sources.list.d/kubernetes.list"
ADMIN="$R/etc/kubernetes/admin.conf"
KUBELET_CONF="$R/etc/kubernetes/kubelet.conf"
PKI="$R/etc/kubernetes/pki"
CRI="unix:///run/containerd/containerd.sock"

# --- Variables, checked before anything changes ---------------------------

case "$VERSION" in
    *[!0-9.]* | '' | .* | *.) fail "DROVER_VAR_KUBERNETES_VERSION='$VERSION' is not a version like 1.31 or 1.31.2" ;;
esac
MINOR=$(echo "$VERSION" | cut -d. -f1-2)
case "$MINOR" in
    1.[0-9]*) ;;
    *) fail "DROVER_VAR_KUBERNETES_VERSION='$VERSION' is not a Kubernetes 1.x version" ;;
esac
MINOR_NUMBER=${MINOR#1.}
if [ "$MINOR_NUMBER" -lt 24 ]; then
    fail "pkgs.k8s.io publishes Kubernetes 1.24 and later, not $MINOR"
fi
if [ -z "$CONTROL_PLANE" ]; then
    fail "DROVER_VAR_CONTROL_PLANE must name the server that runs kubeadm init"
fi

ROLE=worker
if [ "$DROVER_SERVER" = "$CONTROL_PLANE" ]; then
    ROLE=init
else
    for n in $CONTROL_PLANE_NODES; do
        if [ "$n" = "$DROVER_SERVER" ]; then ROLE=control-plane; fi
    done
fi

# The endpoint is host[:port] or [ipv6][:port]; the API server's port 6443
# when none is given.
case "$ENDPOINT" in
    '') ;;
    \[*\]) ENDPOINT="$ENDPOINT:6443" ;;
    \[*\]:*) ;;
    *:*) ;;
    *) ENDPOINT="$ENDPOINT:6443" ;;
esac

# Formats of the secrets, checked without ever printing them.
matches() { printf '%s' "$1" | grep -Eqx "$2"; }
if [ -n "$TOKEN" ] && ! matches "$TOKEN" '[a-z0-9]{6}\.[a-z0-9]{16}'; then
    fail "DROVER_VAR_JOIN_TOKEN is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}, see 'kubeadm token generate')"
fi
if [ -n "$CA_HASH" ]; then
    CA_HASH="sha256:${CA_HASH#sha256:}"
    if ! matches "$CA_HASH" 'sha256:[0-9a-f]{64}'; then
        fail "DROVER_VAR_CA_CERT_HASH is not sha256:<64 hex digits>"
    fi
fi
if [ -n "$CERT_KEY" ] && ! matches "$CERT_KEY" '[0-9a-f]{64}'; then
    fail "DROVER_VAR_CERTIFICATE_KEY is not 64 hex digits (see 'kubeadm certs certificate-key')"
fi
if { [ -n "$CA_CERT" ] && [ -z "$CA_KEY" ]; } || { [ -z "$CA_CERT" ] && [ -n "$CA_KEY" ]; }; then
    fail "DROVER_VAR_CA_CERT and DROVER_VAR_CA_KEY go together"
fi

n=0
for _ in $CONTROL_PLANE_NODES; do n=$((n + 1)); done
case "$ROLE" in
    init)
        if [ "$n" -gt 1 ] && [ -z "$ENDPOINT" ]; then
            fail "several control planes ($CONTROL_PLANE_NODES) need DROVER_VAR_CONTROL_PLANE_ADDRESS, a stable address (DNS name or load balancer) for the API"
        fi
        if [ "$n" -gt 1 ] && [ -z "$CERT_KEY" ]; then
            fail "several control planes need DROVER_VAR_CERTIFICATE_KEY to share the control-plane certificates"
        fi
        ;;
    *)
        [ -n "$ENDPOINT" ] || fail "joining needs DROVER_VAR_CONTROL_PLANE_ADDRESS (the API endpoint)"
        [ -n "$TOKEN" ] || fail "joining needs DROVER_VAR_JOIN_TOKEN"
        [ -n "$CA_HASH" ] || fail "joining needs DROVER_VAR_CA_CERT_HASH"
        if [ "$ROLE" = control-plane ] && [ -z "$CERT_KEY" ]; then
            fail "joining as a control plane needs DROVER_VAR_CERTIFICATE_KEY"
        fi
        ;;
esac

# --- Packages ---------------------------------------------------------------

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

mkdir -p "$STATE"
WORK=$(mktemp -d "$R/run/drover-kubernetes.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

REPO="https://pkgs.k8s.io/core:/stable:/v$MINOR/deb/"
curl -fsSL --retry 3 -o "$WORK/Release.key" "${REPO}Release.key"
mkdir -p "$(dirname "$KEYRING")" "$(dirname "$SOURCES")"
chmod 755 "$(dirname "$KEYRING")"
GNUPGHOME="$WORK" gpg --batch --yes --dearmor -o "$KEYRING.tmp" "$WORK/Release.key"
chmod 644 "$KEYRING.tmp"
mv -f "$KEYRING.tmp" "$KEYRING"
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] $REPO /" >"$SOURCES.tmp"
chmod 644 "$SOURCES.tmp"
mv -f "$SOURCES.tmp" "$SOURCES"

PACKAGES="kubelet kubeadm kubectl"
case "$VERSION" in
    *.*.*) PACKAGES="kubelet=$VERSION-* kubeadm=$VERSION-* kubectl=$VERSION-*" ;;
esac
apt_get update
# The packages not installed yet are recorded first, so that remove.sh
# purges exactly what this taskserv added.
# shellcheck disable=SC2086 # PACKAGES is a list of words (globbing is off)
apt_get install --simulate --no-install-recommends --allow-change-held-packages --allow-downgrades $PACKAGES |
    awk '$1 == "Inst" && substr($3, 1, 1) != "[" { print $2 }' >>"$STATE/packages"
sort -u -o "$STATE/packages" "$STATE/packages"
# shellcheck disable=SC2086
apt_get install --no-install-recommends --allow-change-held-packages --allow-downgrades $PACKAGES
apt-mark hold kubelet kubeadm kubectl >/dev/null
# Until kubeadm writes its configuration the kubelet restarts in a loop;
# that is expected (kubeadm's documented procedure).
systemctl enable --now kubelet
echo "kubernetes: $(kubeadm version -o short) installed"

# --- Bootstrap: init or join ------------------------------------------------

api_ready() { kubectl --kubeconfig "$ADMIN" get --raw=/readyz >/dev/null 2>&1; }
wait_api() {
    waited=0
    until api_ready; do
        waited=$((waited + 5))
        if [ "$waited" -gt "$1" ]; then return 1; fi
        sleep 5
    done
}
leftovers() {
    [ -e "$KUBELET_CONF" ] || [ -e "$ADMIN" ] || [ -e "$PKI/ca.key" ] || [ -d "$R/var/lib/etcd/member" ] ||
        [ -n "$(ls -A "$R/etc/kubernetes/manifests" 2>/dev/null)" ]
}
reset_node() {
    echo "kubernetes: leftovers of an unfinished kubeadm run; kubeadm reset first"
    kubeadm reset -f --cri-socket "$CRI"
    rm -rf "$R/etc/cni/net.d"
}
# kubeadm's config API: v1beta4 from Kubernetes 1.31 on, v1beta3 before.
if [ "$MINOR_NUMBER" -ge 31 ]; then API=kubeadm.k8s.io/v1beta4; else API=kubeadm.k8s.io/v1beta3; fi
# kubeadm configs hold secrets; they live in $WORK, a directory of mode 700
# under /run (tmpfs), deleted on exit.

if [ "$ROLE" = init ]; then
    if [ -f "$STATE/bootstrapped" ] || { [ -f "$ADMIN" ] && api_ready; }; then
        # Set up before: never reset a control plane that may hold a cluster.
        if ! wait_api 300; then
            echo "kubernetes: this control plane was set up before, but its API does not answer /readyz after 5 minutes; leaving it as it is" >&2
            exit 1
        fi
        echo "kubernetes: control plane already initialised"
    else
        if leftovers; then reset_node; fi
        if [ -n "$CA_CERT" ]; then
            # A CA from the secrets: its hash, and so DROVER_VAR_CA_CERT_HASH,
            # is known before the cluster exists.
            mkdir -p "$PKI"
            printf '%s\n' "$CA_CERT" >"$PKI/ca.crt"
            chmod 644 "$PKI/ca.crt"
            (umask 077 && printf '%s\n' "$CA_KEY" >"$PKI/ca.key")
        fi
        {
            echo "apiVersion: $API"
            echo "kind: InitConfiguration"
            if [ -n "$TOKEN" ]; then
                echo "bootstrapTokens:"
                echo "  - token: \"$TOKEN\""
                echo "    ttl: \"$TOKEN_TTL\""
                echo "    groups: [\"system:bootstrappers:kubeadm:default-node-token\"]"
                echo "    usages: [\"signing\", \"authentication\"]"
            fi
            echo "nodeRegistration:"
            echo "  name: \"$DROVER_SERVER\""
            echo "  criSocket: \"$CRI\""
            if [ -n "$CERT_KEY" ]; then
                echo "certificateKey: \"$CERT_KEY\""
            fi
            echo "---"
            echo "apiVersion: $API"
            echo "kind: ClusterConfiguration"
            echo "kubernetesVersion: \"$(kubeadm version -o short)\""
            if [ -n "$ENDPOINT" ]; then
                echo "controlPlaneEndpoint: \"$ENDPOINT\""
            fi
            echo "networking:"
            echo "  podSubnet: \"$POD_CIDR\""
            echo "  serviceSubnet: \"$SERVICE_CIDR\""
            echo "---"
            echo "apiVersion: kubelet.config.k8s.io/v1beta1"
            echo "kind: KubeletConfiguration"
            echo "cgroupDriver: systemd"
        } >"$WORK/kubeadm.yaml"
        set -- init --config "$WORK/kubeadm.yaml" --skip-token-print --skip-certificate-key-print
        if [ -n "$CERT_KEY" ]; then
            # Control-plane certificates go to the cluster, encrypted with
            # the certificate key, for the other control planes to fetch.
            set -- "$@" --upload-certs
        fi
        kubeadm "$@"
        echo "kubernetes: control plane initialised"
    fi
else
    joined() {
        [ -f "$KUBELET_CONF" ] && systemctl is-active --quiet kubelet &&
            { [ "$ROLE" = worker ] || [ -f "$ADMIN" ]; }
    }
    if [ -f "$STATE/bootstrapped" ] || joined; then
        echo "kubernetes: already joined as $ROLE"
    else
        if leftovers; then reset_node; fi
        {
            echo "apiVersion: $API"
            echo "kind: JoinConfiguration"
            echo "nodeRegistration:"
            echo "  name: \"$DROVER_SERVER\""
            echo "  criSocket: \"$CRI\""
            echo "discovery:"
            echo "  bootstrapToken:"
            echo "    apiServerEndpoint: \"$ENDPOINT\""
            echo "    token: \"$TOKEN\""
            echo "    caCertHashes: [\"$CA_HASH\"]"
            if [ "$ROLE" = control-plane ]; then
                echo "controlPlane:"
                echo "  certificateKey: \"$CERT_KEY\""
            fi
        } >"$WORK/kubeadm.yaml"
        kubeadm join --config "$WORK/kubeadm.yaml"
        echo "kubernetes: joined $ENDPOINT as $ROLE"
    fi
fi
: >"$STATE/bootstrapped"

# kubectl for root on control planes, unless root has a kubeconfig of its own.
if [ "$ROLE" != worker ] && [ -f "$ADMIN" ]; then
    if [ ! -e "$R/root/.kube/config" ] || [ -f "$STATE/root-kubeconfig" ]; then
        mkdir -p "$R/root/.kube"
        install -m 600 "$ADMIN" "$R/root/.kube/config.tmp"
        mv -f "$R/root/.kube/config.tmp" "$R/root/.kube/config"
        : >"$STATE/root-kubeconfig"
    fi
fi
