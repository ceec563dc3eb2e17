# meterd .rpm: %postun ($1: 0 on removal). The meterd user and the data dir are kept.

#SCRIPTLETS#

meterd_daemon_reload
if [ "$1" -eq 0 ]; then
    # cargo-generate-rpm 0.21 cannot own directories: remove ours if empty (an edited
    # meterd.toml, saved as meterd.toml.rpmsave, keeps /etc/meterd).
    rmdir /usr/share/doc/meterd/grafana /usr/share/doc/meterd /etc/meterd 2>/dev/null || true
    meterd_note_data_dir
fi
