#!/bin/sh
# Kituo's Moodle layer, applied only when the image carries a Moodle release (image-builder build
# --moodle): the builder unpacked it into /var/www/moodle, root-owned and read-only for the web server,
# as Moodle's documentation requires. Runs after overlays/common/customize.sh.
set -eu

log() { echo "customize(moodle): $*"; }

# Holds the moodle database password: readable by PHP (www-data), not by all.
chown root:www-data /var/www/moodle/config.php
chmod 0640 /var/www/moodle/config.php
# Holds the admin password of the first-boot install.
chown root:root /usr/lib/kituo/moodle-install
chmod 0700 /usr/lib/kituo/moodle-install

systemctl enable kituo-moodle-install.service kituo-moodle-cron.timer

log "done"
