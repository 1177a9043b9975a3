#!/bin/sh
# Install the peers and the workload programs of bench/run.py from Debian.
# Idempotent: packages already present are left alone. Needs root (or sudo).
#
#   sh bench/setup.sh
#
# Peers: Scudo with GWP-ASan (libclang-rt-16-dev), Electric Fence, DUMA,
# Valgrind. Workloads: python3, sqlite3, gcc, g++, perl, jq.
set -eu

PACKAGES="electric-fence duma libclang-rt-16-dev valgrind sqlite3 jq perl gcc g++ python3"

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing="$missing $p"
	fi
done
if [ -z "$missing" ]; then
	echo "setup: every package is installed"
	exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
	SUDO=sudo
fi
echo "setup: installing$missing"
$SUDO apt-get update
# One package at a time: a package this release lacks is reported, and the
# others are still installed; run.py then shows that peer as "not installed".
for p in $missing; do
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$p" \
		|| echo "setup: could not install $p" >&2
done
