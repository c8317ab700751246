# ripcord %post: the ripcord user, the rule directory; enable and start on
# first install, restart on upgrade ($1 is the number of installed copies).
systemd-sysusers /usr/lib/sysusers.d/ripcord.conf || :
mkdir -p /etc/ripcord/rules.d
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now ripcord.service || :
    else
        systemctl try-restart ripcord.service || :
    fi
fi
