#!/bin/sh
# Taskserv webhello, check: the page answers on DROVER_ADDRESS:
# DROVER_VAR_WEBHELLO_PORT within 3 s and names DROVER_SERVER.
set -eu

: "${DROVER_SERVER:?DROVER_SERVER is not set}"
ADDRESS="${DROVER_ADDRESS:-127.0.0.1}"
PORT="${DROVER_VAR_WEBHELLO_PORT:-8080}"

case "$PORT" in
    '' | *[!0-9]*)
        echo "webhello: DROVER_VAR_WEBHELLO_PORT='$PORT' is not a port number" >&2
        exit 2
        ;;
esac
case "$ADDRESS" in
    *:*) URL="http://[$ADDRESS]:$PORT/" ;;
    *) URL="http://$ADDRESS:$PORT/" ;;
esac

# Proxy variables are ignored: the page is on this host.
if ! page=$(python3 - "$URL" <<'PY'
import sys, urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=3) as response:
        sys.stdout.write(response.read().decode("utf-8", "replace"))
except Exception as e:  # connection refused, timeout, HTTP error
    print(f"webhello: {sys.argv[1]}: {e}", file=sys.stderr)
    sys.exit(1)
PY
); then
    exit 1
fi
if ! printf '%s\n' "$page" | grep -Fq -- "$DROVER_SERVER"; then
    echo "webhello: the page on $URL does not name $DROVER_SERVER" >&2
    exit 1
fi
echo "webhello: ok ($URL names $DROVER_SERVER)"
