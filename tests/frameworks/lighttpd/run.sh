#!/bin/sh
# lighttpd under baton (tests/it/frameworks.rs; README "Frameworks"): writes
# this worker's index.html (hello from generation G pid P: the shell's pid,
# which exec makes lighttpd's, the LISTEN_PID baton set) and runs lighttpd
# in the foreground. With BROKEN_RELEASE set it runs broken.conf, which
# lighttpd rejects: the broken release.
set -eu
docroot="$FIXTURE_TMP/docroot-$$"
mkdir -p "$docroot"
printf 'hello from generation %s pid %s\n' "$BATON_GENERATION" "$$" >"$docroot/index.html"
export DOCROOT="$docroot"
conf=lighttpd.conf
if [ -n "${BROKEN_RELEASE:-}" ]; then conf=broken.conf; fi
exec lighttpd -D -f "$conf"
