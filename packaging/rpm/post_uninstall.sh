# ripcord %postun: on erase, the state and the ripcord user go too (rpm has
# no purge; the config is kept as .rpmsave if it was edited).
if [ "$1" -eq 0 ]; then
    rm -rf /var/lib/ripcord
    userdel ripcord >/dev/null 2>&1 || :
    groupdel ripcord >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
