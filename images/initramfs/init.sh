#!/bin/sh
# /init of ironseed's installer initramfs (busybox). Loads the NIC and disk drivers, takes an
# address by DHCP on the NIC that PXE-booted (ironseed.mac= from iPXE's ${net0/mac}), and runs
# the installer. An installer stick boots with ironseed.offline=1: no network at all, the
# installer reads everything from the stick. Any failure ends at a shell on the console.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
echo "ironseed-installer: starting ($(uname -r))"

rescue() {
    echo "ironseed-installer: $*"
    echo "ironseed-installer: dropping to a shell (reboot -f to restart)"
    exec setsid cttyhack sh
}

# Drivers in dependency order; a driver for hardware this machine lacks just fails to bind.
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/modules.order

arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}" ;; esac; done; }
MAC=$(arg ironseed.mac)

# An inspection boot reads the Secure Boot variable: efivarfs, read-only (nothing here writes
# firmware variables).
if [ "$(arg ironseed.mode)" = inspect ] && [ -d /sys/firmware/efi/efivars ]; then
    mount -t efivarfs -o ro efivarfs /sys/firmware/efi/efivars 2>/dev/null
fi

if [ "$(arg ironseed.offline)" = 1 ]; then
    echo "ironseed-installer: offline install from the installer stick (no network)"
    /bin/installer
    rescue "the installer exited"
fi

# NICs appear asynchronously after their driver loads: wait up to 15 s for the one that booted.
IF=""
i=0
while [ -z "$IF" ] && [ $i -lt 75 ]; do
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] && continue
        if [ -z "$MAC" ] || [ "$(cat "$d/address")" = "$MAC" ]; then IF=$n; break; fi
    done
    [ -n "$IF" ] || sleep 0.2
    i=$((i + 1))
done
ip link set lo up
[ -n "$IF" ] || rescue "no network interface with MAC ${MAC:-(any)}"
ip link set "$IF" up
echo "ironseed-installer: DHCP on $IF ($MAC)"
udhcpc -i "$IF" -s /etc/udhcpc.script -f -q -n -t 20 -T 3 || rescue "no DHCP answer on $IF"

/bin/installer
rescue "the installer exited"
