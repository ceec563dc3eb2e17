# meterd .rpm: %preun ($1: 0 on removal, 1 or more on upgrade). On removal stops and disables the
# units; on upgrade leaves meterd running (the new package's %post decides).

#SCRIPTLETS#

if [ "$1" -eq 0 ]; then
    meterd_stop_and_disable
fi
