# Shared by the deb and rpm maintainer scripts (inlined at build time, so
# the installed scripts need nothing else). POSIX sh.

# The apps set up with `baton init`: services whose ExecStart runs baton.
baton_apps() {
    for unit in /etc/systemd/system/*.service; do
        [ -f "$unit" ] || continue
        grep -q '^ExecStart=/usr/bin/baton run ' "$unit" 2>/dev/null || continue
        basename "$unit" .service
    done
}

baton_daemon_reload() {
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
}

# The journal catalog (README "Reload records in the journal") is read
# from journald's binary database: rebuild it whenever baton.catalog came
# or went, so that `journalctl -x` explains baton's records.
baton_update_catalog() {
    if command -v journalctl >/dev/null 2>&1; then
        journalctl --update-catalog >/dev/null 2>&1 || true
    fi
}

# After an upgrade: every running supervisor re-executes the new binary in
# place (`baton upgrade --all`, README "Upgrading baton"): same pid, same
# workers, nothing restarts. An administrator who wants to choose the
# moment creates /etc/baton/no-auto-upgrade.
baton_upgrade_running() {
    [ -d /run/systemd/system ] || return 0
    if [ -e /etc/baton/no-auto-upgrade ]; then
        echo "baton: /etc/baton/no-auto-upgrade exists, so running apps keep the earlier baton for now."
        echo "baton: switch them over in place when you choose (no worker restarts): baton upgrade --all"
        return 0
    fi
    if ! baton upgrade --all; then
        echo "baton: the apps not upgraded (above, with why) keep serving on the earlier baton;"
        echo "baton: retry with 'baton upgrade NAME', or 'systemctl restart NAME.service' (its socket stays open)."
    fi
    return 0
}

# Before removal: what stays behind.
baton_remove_note() {
    apps=""
    for app in $(baton_apps); do
        apps="$apps $app"
    done
    [ -n "$apps" ] || return 0
    echo "baton: removing the package leaves the apps you set up with 'baton init' in place:$apps"
    echo "baton: their configs in /etc/baton/ and units in /etc/systemd/system/ are yours and are kept."
    echo "baton: running ones keep running, but reloads and restarts need baton. To retire one:"
    echo "baton:   systemctl disable --now NAME.socket NAME.service"
}
