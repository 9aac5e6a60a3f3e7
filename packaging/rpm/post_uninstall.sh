# certagent %postun: RPM has no purge; the configuration (/etc/certagent) and the state
# (/var/lib/certagent) stay until removed by hand.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
