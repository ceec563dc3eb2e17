# meterd .rpm: %post ($1: 1 on install, 2 or more on upgrade). Creates the user; never enables or
# starts meterd; after an upgrade restarts a running meterd only if the new binary accepts
# /etc/meterd/meterd.toml.

#SCRIPTLETS#

meterd_create_user
meterd_daemon_reload
if [ "$1" -ge 2 ]; then
    meterd_restart_if_running
fi
