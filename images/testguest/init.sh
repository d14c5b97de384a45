#!/bin/sh
# /init of the Vauban test guest (busybox sh as PID 1, initramfs only).
#
# Serial-console protocol (tests match these lines, keep them stable):
#   VAUBAN-TESTGUEST-BOOTED                       init started, modules loaded; from
#                                                 here on a Xen shutdown request is
#                                                 honoured (see below)
#   vauban-testguest hostname=<hostname>          from the NoCloud seed's meta-data
#   vauban-testguest instance-id=<id>
#   (output of user-data, when it starts with #!)
#   vauban-testguest user-data exit=<status>
#   vauban-testguest network-config=present       when the seed has network-config
#   vauban-testguest net <dev> <address/prefix>   each address it configured from it
#   vauban-testguest no-seed                      when no `cidata` filesystem showed up
#   VAUBAN-TESTGUEST-READY                        listening for the ACPI power button
#   vauban-testguest powering off                 power button pressed (or, in a Xen PV
#                                                 guest, Xen's shutdown request); then
#                                                 poweroff -f
#   vauban-testguest disks=<vda,vdb,...>          at boot and whenever the set of
#                                                 /sys/block/vd* changes (hot-plug);
#                                                 names sorted, comma-separated
# Once READY, a shell reads commands typed on the serial console (the terminal echoes
# them) and writes their output there: the live-console tests type into it.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
SEED_WAIT_TENTHS=100  # how long to look for the cidata device: 10 s
SEED=/run/seed

say() {
    echo "$*" > /dev/console
}

mount_basics() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /run /tmp
    mount -t tmpfs -o mode=0755 tmpfs /run
    mount -t tmpfs -o mode=1777 tmpfs /tmp
}

load_modules() {
    # /etc/testguest/modules lists module paths under /lib/modules, dependencies first.
    while read -r mod; do
        [ -n "$mod" ] || continue
        insmod "/lib/modules/$mod" 2>/dev/null || say "vauban-testguest insmod failed: $mod"
    done < /etc/testguest/modules
}

# Print the value of a top-level `key: value` line of a simple YAML file,
# without surrounding quotes (escape sequences are not decoded).
yaml_value() {
    sed -n "s/^$1:[[:space:]]*//p" "$2" | head -n 1 \
        | sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

# Configure NICs from the platform's network-config (version 2, written as JSON with one
# value per line): each ethernet is found by MAC and given its MTU, addresses and routes.
apply_network_config() {
    awk '
        /"macaddress"/ { gsub(/[",]/, "", $2); mac = $2 }
        /"mtu"/        { gsub(/[",]/, "", $2); print "mtu", mac, $2 }
        /"via"/        { gsub(/[",]/, "", $2); print "via", mac, $2 }
        /^ *"[0-9a-f.:]+\/[0-9]+",?$/ { gsub(/[", ]/, ""); print "addr", mac, $0 }
    ' "$1" | while read -r what mac value; do
        dev=$(nic_with_mac "$mac") || { say "vauban-testguest no nic with mac $mac"; continue; }
        ip link set dev "$dev" up
        case "$what" in
            mtu)  ip link set dev "$dev" mtu "$value" ;;
            addr) ip addr add "$value" dev "$dev" && say "vauban-testguest net $dev $value" ;;
            via)  ip route add default via "$value" dev "$dev" 2>/dev/null ;;
        esac
    done
}

nic_with_mac() {
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address" 2>/dev/null)" = "$1" ] && { basename "$dev"; return 0; }
    done
    return 1
}

find_seed_device() {
    i=0
    while [ "$i" -lt "$SEED_WAIT_TENTHS" ]; do
        dev=$(findfs LABEL=cidata 2>/dev/null) && { echo "$dev"; return 0; }
        usleep 100000
        i=$((i + 1))
    done
    return 1
}

apply_meta_data() {
    hostname=$(yaml_value local-hostname "$SEED/meta-data")
    instance_id=$(yaml_value instance-id "$SEED/meta-data")
    [ -n "$hostname" ] && hostname "$hostname"
    say "vauban-testguest hostname=$(hostname)"
    say "vauban-testguest instance-id=$instance_id"
}

run_user_data() {
    [ -f "$SEED/user-data" ] || return 0
    [ "$(head -c 2 "$SEED/user-data")" = "#!" ] || return 0
    cp "$SEED/user-data" /run/user-data
    chmod 0700 /run/user-data
    /run/user-data < /dev/null > /dev/console 2>&1
    say "vauban-testguest user-data exit=$?"
}

apply_seed() {
    if ! dev=$(find_seed_device); then
        say "vauban-testguest no-seed"
        return 0
    fi
    mkdir -p "$SEED"
    if ! mount -t iso9660 -o ro "$dev" "$SEED"; then
        say "vauban-testguest seed-mount-failed device=$dev"
        return 0
    fi
    [ -f "$SEED/meta-data" ] && apply_meta_data
    run_user_data
    if [ -f "$SEED/network-config" ]; then
        say "vauban-testguest network-config=present"
        apply_network_config "$SEED/network-config"
    fi
    return 0
}

# Print the virtio disks the kernel has, once at start and again whenever the set
# changes (a disk hot-plugged or unplugged). One poll a second, no fork per poll
# but `sleep`: the glob is expanded (and sorted) by the shell itself.
watch_disks() {
    last=unset
    while :; do
        now=
        for dev in /sys/block/vd*; do
            [ -e "$dev" ] && now="$now,${dev##*/}"
        done
        now=${now#,}
        if [ "$now" != "$last" ]; then
            say "vauban-testguest disks=$now"
            last=$now
        fi
        sleep 1
    done
}

# busybox acpid maps the ACPI power button (KEY_POWER on an evdev device) to
# the action PWRF/00000080 under its config directory.
start_acpid() {
    mkdir -p /etc/acpi/PWRF
    cat > /etc/acpi/PWRF/00000080 <<'EOF'
#!/bin/sh
echo "vauban-testguest powering off" > /dev/console
sync
poweroff -f
EOF
    chmod 0755 /etc/acpi/PWRF/00000080
    acpid -d -c /etc/acpi -p /run/acpid.pid < /dev/null > /dev/console 2>&1 &
    # acpid writes its pid file once it has opened every /dev/input/event*:
    # only then is a power-button press certain to be seen.
    i=0
    while [ ! -s /run/acpid.pid ] && [ "$i" -lt 50 ]; do
        usleep 100000
        i=$((i + 1))
    done
    [ -s /run/acpid.pid ] || say "vauban-testguest acpid-not-ready"
}

mount_basics
# A Xen PV guest has no ACPI: Xen's shutdown request makes its kernel run /sbin/poweroff,
# which (busybox, without its init) asks PID 1 by SIGUSR2. Set before BOOTED: the kernel
# drops a signal PID 1 has no handler for, so a request made earlier would be lost.
trap 'say "vauban-testguest powering off"; sync; poweroff -f' USR2
load_modules
say "VAUBAN-TESTGUEST-BOOTED"
watch_disks < /dev/null > /dev/null 2>&1 &
apply_seed
start_acpid
say "VAUBAN-TESTGUEST-READY"
echo "VAUBAN-TESTGUEST-READY" > /dev/tty1 2>/dev/null  # on the VGA screen too
while :; do
    sh < /dev/ttyS0 > /dev/ttyS0 2>&1
    sleep 1  # the serial port went away: try again, without spinning
done &
# PID 1 waits on its sleeps rather than running them in the foreground: the USR2 trap
# (set at the start) runs only between commands.
while :; do
    sleep 3600 &
    wait $!
done
