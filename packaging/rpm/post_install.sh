# certagent %post ($1: 1 = install, 2 = upgrade): the group for shared keys, the directories,
# then enable; start (a no-op until /etc/certagent/config.toml or a conf.d/*.toml exists: ConditionPathExists);
# restart on upgrade.
systemd-sysusers certagent.conf >/dev/null 2>&1 || :
systemd-tmpfiles --create certagent.conf >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl enable certagent.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start certagent.service >/dev/null 2>&1 || :
    fi
elif [ -d /run/systemd/system ]; then
    systemctl try-restart certagent.service >/dev/null 2>&1 || :
fi
