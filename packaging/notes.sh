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

# After an upgrade: running supervisors are not restarted (that would stop
# their workers); they keep the old binary until their next restart.
baton_upgrade_note() {
    [ -d /run/systemd/system ] || return 0
    running=""
    for app in $(baton_apps); do
        if systemctl is-active --quiet "$app.service" 2>/dev/null; then
            running="$running $app"
        fi
    done
    [ -n "$running" ] || return 0
    echo "baton: installed over an earlier version. These apps keep running the earlier baton until their next restart:$running"
    echo "baton: they keep serving meanwhile; 'systemctl reload' keeps working. To switch one over:"
    echo "baton:   systemctl restart NAME.service   (its socket stays open: connections wait, none is refused)"
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
