#!/bin/sh
# Installs the rendered app.conf (drover renders templates/app.conf.j2 per
# server into $DROVER_TEMPLATES, owner-only) into the server's /etc/app.
# Idempotent: installing the same content twice changes nothing.
set -eu
root=${DROVER_ROOT%/}
src=${DROVER_TEMPLATES:?drover renders the templates into DROVER_TEMPLATES}/app.conf
dst="$root/etc/app/app.conf"
mkdir -p "$root/etc/app"
chmod 700 "$root/etc/app"
if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    echo "app.conf already up to date"
    exit 0
fi
[ -f "$dst" ] && cp -p "$dst" "$dst.previous"
umask 077
cp "$src" "$dst.tmp"
mv "$dst.tmp" "$dst"
# The configuration is printed for the record, as many real scripts do; drover
# masks every secret value in task logs and streams, so this is safe to show.
echo "installed $dst:"
cat "$dst"
