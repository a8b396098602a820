#!/bin/sh
# Kituo common customization, run by the image builder with /bin/sh inside the
# finished root filesystem (chroot, qemu-user, no network, no running systemd).
# Deterministic and idempotent: only modes, links and unit enablement; keys,
# the MariaDB datadir and anything random happen on first boot.
set -eu

log() { echo "customize(common): $*"; }

# Units a package may not ship on every release: act only on those present.
unit_exists() {
    [ -e "/etc/systemd/system/$1" ] || [ -e "/usr/lib/systemd/system/$1" ] ||
        [ -e "/lib/systemd/system/$1" ]
}
enable_units() {
    for u in "$@"; do
        systemctl enable "$u"
    done
}
disable_if_present() {
    for u in "$@"; do
        if unit_exists "$u"; then
            systemctl disable "$u"
        fi
    done
}

# --- Time zone -----------------------------------------------------------------
tz=$(cat /etc/timezone)
[ -f "/usr/share/zoneinfo/$tz" ] || { log "unknown time zone '$tz' (center.timezone)"; exit 1; }
ln -sfn "/usr/share/zoneinfo/$tz" /etc/localtime
chmod 0644 /etc/timezone /etc/hostname /etc/hosts /etc/fstab

# --- Root account: keys only -------------------------------------------------------
# A password field starting with '!' or '*' matches no password. Touch the
# file only when needed: usermod would also be a change on every run.
root_pw=$(sed -n 's/^root:\([^:]*\):.*/\1/p' /etc/shadow)
case "$root_pw" in
    '!'* | '*'*) ;;
    *) usermod --lock root; log "locked root's password" ;;
esac
mkdir -p /root/.ssh
chown root:root /root/.ssh /root/.ssh/authorized_keys
chmod 0700 /root/.ssh
chmod 0600 /root/.ssh/authorized_keys

# --- Kituo scripts and secrets -----------------------------------------------------
chmod 0755 /usr/lib/kituo/firstboot
# Holds the database passwords.
chown root:root /usr/lib/kituo/db-init
chmod 0700 /usr/lib/kituo/db-init
chmod 0644 /etc/kituo/appliance.ini
# The sync engine's database password and its secret with the hub.
chown -R root:root /etc/kituo/secrets
chmod 0700 /etc/kituo/secrets
chmod 0600 /etc/kituo/secrets/kituo-db-password /etc/kituo/secrets/sync-secret

# --- PHP -----------------------------------------------------------------------------
# The CLI (Moodle's cron and upgrade scripts) gets the same settings as FPM.
ln -sfn ../../fpm/conf.d/90-kituo.ini /etc/php/8.4/cli/conf.d/90-kituo.ini

# --- nginx and the placeholder site ---------------------------------------------------
rm -f /etc/nginx/sites-enabled/default
ln -sfn ../sites-available/kituo /etc/nginx/sites-enabled/kituo
chown -R root:root /var/www/moodle
chmod 0755 /var/www/moodle
chmod 0644 /var/www/moodle/index.html
# Holds the moodle database password: readable by PHP-FPM (www-data), not by all.
chown root:www-data /var/www/moodle/kituo-health.php
chmod 0640 /var/www/moodle/kituo-health.php

# --- Network ---------------------------------------------------------------------------
# Holds the Wi-Fi passphrase.
chmod 0600 /etc/hostapd/kituo.conf
ln -sfn ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf

# --- UPS ------------------------------------------------------------------------------------
# upsd.users holds this card's NUT password; NUT's daemons read their files as group nut.
chown root:nut /etc/nut /etc/nut/nut.conf /etc/nut/ups.conf /etc/nut/upsd.conf /etc/nut/upsd.users
chmod 0640 /etc/nut/nut.conf /etc/nut/ups.conf /etc/nut/upsd.conf /etc/nut/upsd.users
enable_units nut-driver-enumerator.service nut-server.service
# The supervisor decides when to shut down (debounced, MariaDB stopped first, cancelled while power
# comes back in time): upsmon would be a second, cruder judge racing it. Masked, since nut.target
# pulls it in whether enabled or not.
systemctl mask nut-monitor.service

# --- Services ----------------------------------------------------------------------------
enable_units \
    systemd-networkd.service \
    systemd-resolved.service \
    systemd-timesyncd.service \
    nftables.service \
    dnsmasq.service \
    kituo-hostapd.service \
    ssh.service \
    nginx.service \
    mariadb.service \
    php8.4-fpm.service \
    kituo-firstboot.service \
    kituo-db-init.service \
    kituo-supervisor.service

# No RTC: fake-hwclock restores the last saved time at boot (never earlier than the image's build time,
# which the builder writes to /etc/fake-hwclock.data) and saves it hourly and at shutdown.
enable_units fake-hwclock-load.service fake-hwclock-save.timer

# hostapd.service is left as Debian ships it (masked/disabled without
# /etc/hostapd/hostapd.conf): kituo-hostapd.service runs the access point.

# Nothing here needs "online": waiting for a cable that is not plugged in
# would hold nginx (Wants=network-online.target) for two minutes.
disable_if_present systemd-networkd-wait-online.service
# wpa_supplicant is kept for a future Wi-Fi uplink; wlan0 is the access point.
disable_if_present wpa_supplicant.service
# Updates come as signed A/B bundles, not apt; no network chatter or SD writes.
disable_if_present apt-daily.timer apt-daily-upgrade.timer man-db.timer \
    dpkg-db-backup.timer
# Socket activation would bypass the first-boot ordering of ssh.service.
disable_if_present ssh.socket

log "done"
