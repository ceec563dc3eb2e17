# Shared by the .deb's maintainer scripts and the .rpm's scriptlets: scripts/package.sh puts this
# file where each of them says #SCRIPTLETS#. POSIX sh; every function tolerates a machine where
# systemd is not running (a container or image build), where it changes only files.

METERD_BIN=/usr/bin/meterd
METERD_CONFIG=/etc/meterd/meterd.toml

meterd_systemd_running() {
    [ -d /run/systemd/system ]
}

# The meterd user and group, from the sysusers.d file the package installs.
meterd_create_user() {
    systemd-sysusers /usr/lib/sysusers.d/meterd.conf
}

meterd_daemon_reload() {
    if meterd_systemd_running; then
        systemctl daemon-reload || true
    fi
}

# After an upgrade: a running meterd is restarted only once the new binary accepts the
# configuration; otherwise the old process keeps running and the reason is printed. Nothing is
# started that was not running: installing never enables or starts meterd.
meterd_restart_if_running() {
    if ! systemctl is-active --quiet meterd.service 2>/dev/null; then
        return 0
    fi
    # The same check as the unit's ExecStartPre, on the file alone (no METERD_* from this shell).
    if problems=$(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$METERD_BIN" check-config --config "$METERD_CONFIG" 2>&1); then
        echo "meterd: the new meterd accepts $METERD_CONFIG; restarting meterd.service"
        systemctl restart meterd.service || echo "meterd: restarting meterd.service failed; see journalctl -u meterd.service" >&2
    else
        echo "meterd: NOT restarting meterd.service: the new meterd refuses $METERD_CONFIG:" >&2
        printf '%s\n' "$problems" >&2
        echo "meterd: the running meterd goes on with the old binary. Fix the file, then run:" >&2
        echo "meterd:   meterd check-config --config $METERD_CONFIG && systemctl restart meterd.service" >&2
    fi
}

# Removal (not upgrade): stop and disable both units while their files are still there.
meterd_stop_and_disable() {
    systemctl stop meterd.service meterd.socket >/dev/null 2>&1 || true
    systemctl --no-reload disable meterd.service meterd.socket >/dev/null 2>&1 || true
}

# Removal leaves the data dir: it may hold acknowledged usage not yet billed, and the receipts.
meterd_note_data_dir() {
    if [ -d /var/lib/private/meterd ] || [ -d /var/lib/meterd ]; then
        echo "meterd: kept the data dir /var/lib/meterd (unsubmitted usage, receipts, dead letters); delete it once reconciled (docs/operations.md)"
    fi
}
