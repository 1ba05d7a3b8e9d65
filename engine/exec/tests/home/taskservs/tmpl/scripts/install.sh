#!/bin/sh
# Copies the rendered template into the server root.
set -eu
cp "${DROVER_TEMPLATES:?}/conf" "${DROVER_ROOT%/}/conf"
