#!/bin/sh
# Installs (or removes) hostscope as a systemd service from the unpacked
# release tarball made by `cargo xtask package`. Idempotent: run it again to
# upgrade the binary and the unit; an existing configuration is never
# overwritten.
#
#   sudo ./install.sh                   install, then: systemctl enable --now hostscope
#   sudo ./install.sh --uninstall       stop and remove the binary and the unit
#                                       (the configuration in /etc/hostscope is kept)
#   ./install.sh --destdir DIR          install under DIR (staging, packaging, tests);
#                                       systemctl is not called. DESTDIR=DIR works too.
set -eu

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "$0"
}

destdir=${DESTDIR:-}
action=install
while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) action=uninstall ;;
        --destdir)
            [ $# -ge 2 ] || { echo "install.sh: --destdir needs a directory" >&2; exit 2; }
            destdir=$2
            shift
            ;;
        --destdir=*) destdir=${1#--destdir=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

here=$(cd "$(dirname "$0")" && pwd)
bin=$destdir/usr/local/bin/hostscope
unit=$destdir/etc/systemd/system/hostscope.service
etc=$destdir/etc/hostscope

# systemctl only for a real install on a host that runs systemd.
with_systemd() {
    [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

if [ "$action" = uninstall ]; then
    if with_systemd; then
        systemctl disable --now hostscope.service 2>/dev/null || true
    fi
    rm -f "$bin" "$unit"
    if with_systemd; then
        systemctl daemon-reload
    fi
    echo "hostscope removed; configuration kept in $etc"
    exit 0
fi

for f in hostscope hostscope.service config.yaml hostscope.env.example; do
    [ -f "$here/$f" ] || { echo "install.sh: $here/$f is missing" >&2; exit 1; }
done

install -d -m 0755 "$destdir/usr/local/bin" "$destdir/etc/systemd/system" "$etc"
install -m 0755 "$here/hostscope" "$bin"
install -m 0644 "$here/hostscope.service" "$unit"
if [ -e "$etc/config.yaml" ]; then
    echo "kept existing $etc/config.yaml"
else
    install -m 0644 "$here/config.yaml" "$etc/config.yaml"
fi
# The environment file can hold credentials (OTLP headers): root only.
if [ -e "$etc/hostscope.env" ]; then
    echo "kept existing $etc/hostscope.env"
else
    install -m 0600 "$here/hostscope.env.example" "$etc/hostscope.env"
fi

if with_systemd; then
    systemctl daemon-reload
    if systemctl is-active --quiet hostscope.service; then
        systemctl restart hostscope.service
        echo "hostscope upgraded and restarted"
    else
        echo "hostscope installed; start it with: systemctl enable --now hostscope"
    fi
else
    echo "hostscope installed under ${destdir:-/}"
fi
