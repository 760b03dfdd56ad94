#!/bin/sh
# Installs the agent on a carriage, or removes it: `make install`, `make uninstall` (docs/systemd.md,
# "Installing and enabling"). Run as root from the repository.
#
#   sh packaging/install.sh install|uninstall
#
# Environment:
#   DESTDIR   a staging root to install into instead of this machine (packaging, tests). The venv
#             made there has DESTDIR in its paths and runs only from there: on a carriage, leave
#             DESTDIR empty.
#   PYTHON    the interpreter the venv is made from (default python3).
#   PACKAGE   what pip installs into the venv (default: this repository; or a wheel).
#   PIP_ARGS  extra pip arguments, e.g. "--no-index --find-links /media/wheels" offline.
#
# Every step may be repeated: a second install updates the agent, the units, the rules and the docs,
# and never overwrites the technician's /etc/oht-agent/agent.toml. Uninstall keeps the data
# directory, the configuration and the accounts.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
PACKAGE=${PACKAGE:-$REPO}
PIP_ARGS=${PIP_ARGS:-}

# Where things go (docs/systemd.md). Units in /etc/systemd/system: this is the administrator's own
# install, not a distribution package's (/usr/lib/systemd/system), and the units' local changes
# belong in drop-ins (`systemctl edit`), which live beside them and which this script never touches.
OPT=/opt/oht-agent
VENV=$OPT/.venv
CONF_DIR=/etc/oht-agent
CONF=$CONF_DIR/agent.toml
DATA_DIR=/var/lib/oht-agent
UNIT_DIR=/etc/systemd/system
RULES_DIR=/etc/udev/rules.d
SYSUSERS_CONF=/usr/lib/sysusers.d/oht-agent.conf
UNITS="oht-agent-core.service oht-agent-gateway.service oht-agent.target"
RULES="99-oht485.rules 99-oht-core.rules"
TARGET=oht-agent.target
GROUP=oht-agent
# The register profiles go beside the agent, and the installed agent.toml names them: the
# installed package does not carry config/profiles, where an empty profiles_dir points.
PROFILES_DIR=$OPT/profiles

ACTION=${1:-}
CODE=INSTALL
[ "$ACTION" = uninstall ] && CODE=UNINSTALL
STEP="start"
TMP=""

say() {
	printf 'oht-agent %s: %s\n' "$ACTION" "$*"
}

# fail NAME message hint: the stable code, what failed, what to do; exit status 1.
fail() {
	printf '%s_%s: %s\nhint: %s\n' "$CODE" "$1" "$2" "$3" >&2
	STEP=""
	exit 1
}

# run command...: the current step's command; on failure, the step and the command are named.
run() {
	"$@" || fail STEP_FAILED "$STEP: '$*' exited with status $?" "the message above it says why; fix that and run make $ACTION again (every step may be repeated)"
}

on_exit() {
	status=$?
	[ -n "$TMP" ] && rm -f "$TMP"
	if [ "$status" -ne 0 ] && [ -n "$STEP" ]; then
		printf '%s_STEP_FAILED: %s failed (exit status %s)\nhint: fix it and run make %s again\n' \
			"$CODE" "$STEP" "$status" "$ACTION" >&2
	fi
}
trap on_exit EXIT

need() {
	command -v "$1" >/dev/null 2>&1 || fail TOOL_MISSING "$1 not found" "$2"
}

# ------------------------------------------------------------------------------------ common
case "$ACTION" in
install | uninstall) ;;
*)
	printf 'usage: %s install|uninstall   (DESTDIR=staging root, PYTHON, PACKAGE, PIP_ARGS)\n' "$0" >&2
	STEP=""
	exit 2
	;;
esac

[ "$(id -u)" -eq 0 ] || fail NOT_ROOT "must run as root (it installs accounts, units and files owned by root)" \
	"sudo make $ACTION"

# D prefixes every installed path; an empty DESTDIR (or /) is this machine.
D=${DESTDIR:-}
D=${D%/}
if [ -n "$D" ]; then
	STEP="staging root $D"
	run mkdir -p "$D"
	D=$(cd "$D" && pwd)
fi
# The script replaces $OPT/docs and uninstall removes $OPT: never the repository itself.
case "$REPO/" in
"$D$OPT"/*)
	fail REPO_IN_TARGET "the repository $REPO is inside $D$OPT, which install replaces and uninstall removes" \
		"clone it elsewhere (for example /usr/local/src/oht-agent) and run make $ACTION there"
	;;
esac
# systemd's tools act on the staging root with --root=; on this machine without it.
ROOT_ARG=${D:+--root=$D}
# A running systemd and udev are told about changes; a staging root has none.
LIVE_SYSTEMD=""
[ -z "$D" ] && [ -d /run/systemd/system ] && LIVE_SYSTEMD=yes

need systemctl "install systemd (apt-get install systemd)"

# ------------------------------------------------------------------------------------ install
install_accounts() {
	STEP="accounts"
	need systemd-sysusers "install systemd (apt-get install systemd)"
	run install -D -m 0644 -o 0 -g 0 "$REPO/systemd/oht-agent.sysusers" "$D$SYSUSERS_CONF"
	# systemd-sysusers writes the root's /etc/passwd and /etc/group, and needs the directory.
	run install -d -m 0755 "$D/etc"
	run systemd-sysusers ${ROOT_ARG:+"$ROOT_ARG"} "$(basename "$SYSUSERS_CONF")"
	# The group's id from the root's own /etc/group (a staging root's ids are not this machine's).
	GID=$(sed -n "s/^$GROUP:[^:]*:\([0-9][0-9]*\):.*/\1/p" "$D/etc/group")
	[ -n "$GID" ] || fail GROUP_MISSING "group $GROUP is not in $D/etc/group after systemd-sysusers" \
		"check $D$SYSUSERS_CONF and the output of systemd-sysusers above"
	say "accounts oht-core, oht-gateway and group $GROUP (gid $GID) in place"
}

install_agent() {
	STEP="venv $VENV"
	if [ -x "$D$VENV/bin/python" ]; then
		say "reusing the venv $D$VENV"
	else
		need "$PYTHON" "install python3 (3.11 or later) or set PYTHON="
		run install -d -m 0755 -o 0 -g 0 "$D$OPT"
		"$PYTHON" -m venv "$D$VENV" || fail STEP_FAILED "$STEP: '$PYTHON -m venv' exited with status $?" \
			"on Debian, apt-get install python3-venv"
		say "created the venv $D$VENV"
	fi
	STEP="pip install $PACKAGE"
	# PIP_ARGS is split into words on purpose.
	# shellcheck disable=SC2086
	run "$D$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --upgrade $PIP_ARGS "$PACKAGE"
	if [ -f "$PACKAGE" ]; then
		# pip rebuilds a directory every time, but leaves a wheel of the installed version alone.
		# shellcheck disable=SC2086
		run "$D$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --force-reinstall --no-deps \
			$PIP_ARGS "$PACKAGE"
	fi
	STEP="the entry point $VENV/bin/oht-agent"
	run "$D$VENV/bin/oht-agent" --help >/dev/null
	say "installed the agent into $D$VENV"

	STEP="docs and profiles"
	# Replaced as a whole, so that a file removed from the repository does not linger.
	run rm -rf "$D$OPT/docs" "$D$PROFILES_DIR"
	run install -d -m 0755 -o 0 -g 0 "$D$OPT/docs" "$D$PROFILES_DIR"
	run install -m 0644 -o 0 -g 0 "$REPO"/docs/* "$D$OPT/docs/"
	run install -m 0644 -o 0 -g 0 "$REPO"/config/profiles/*.toml "$D$PROFILES_DIR/"
	say "installed the docs in $D$OPT/docs and the register profiles in $D$PROFILES_DIR"
}

install_config() {
	STEP="configuration $CONF"
	run install -d -m 0755 -o 0 -g 0 "$D$CONF_DIR"
	TMP=$(mktemp)
	run sed "s|^profiles_dir = \"\"|profiles_dir = \"$PROFILES_DIR\"|" "$REPO/config/agent.toml" >"$TMP"
	grep -q "^profiles_dir = \"$PROFILES_DIR\"$" "$TMP" || fail CONFIG_TEMPLATE \
		"config/agent.toml has no line 'profiles_dir = \"\"' to point at $PROFILES_DIR" \
		"restore that line in config/agent.toml (the installed default names the installed profiles)"
	if [ ! -e "$D$CONF" ]; then
		run install -m 0640 -o 0 -g "$GID" "$TMP" "$D$CONF"
		say "installed the default configuration $D$CONF (root:$GROUP 0640)"
	elif cmp -s "$TMP" "$D$CONF"; then
		say "kept $D$CONF (it is the current default)"
	else
		run install -m 0640 -o 0 -g "$GID" "$TMP" "$D$CONF.new"
		say "kept $D$CONF (changed here); the new default is $D$CONF.new: compare and merge by hand"
	fi
	rm -f "$TMP"
	TMP=""
}

install_udev() {
	STEP="udev rules"
	for rule in $RULES; do
		run install -D -m 0644 -o 0 -g 0 "$REPO/systemd/$rule" "$D$RULES_DIR/$rule"
	done
	say "installed the udev rules $RULES in $D$RULES_DIR"
	if [ -z "$D" ] && command -v udevadm >/dev/null 2>&1; then
		if udevadm control --reload &&
			udevadm trigger --subsystem-match=tty --subsystem-match=misc --subsystem-match=gpio; then
			say "udev reloaded its rules"
		else
			say "WARNING: udev did not reload (is systemd-udevd running?); the rules apply from the next boot"
		fi
	fi
}

install_units() {
	STEP="systemd units"
	for unit in $UNITS; do
		run install -D -m 0644 -o 0 -g 0 "$REPO/systemd/$unit" "$D$UNIT_DIR/$unit"
	done
	[ -n "$LIVE_SYSTEMD" ] && run systemctl daemon-reload
	STEP="enable $TARGET"
	run systemctl ${ROOT_ARG:+"$ROOT_ARG"} --quiet enable "$TARGET"
	say "installed the units in $D$UNIT_DIR and enabled $TARGET"
	if [ -n "$LIVE_SYSTEMD" ] && systemctl --quiet is-active "$TARGET"; then
		say "the agent is running the previous version: systemctl restart $TARGET"
	elif [ -z "$D" ]; then
		say "start the agent: systemctl start $TARGET"
	fi
}

# ---------------------------------------------------------------------------------- uninstall
uninstall_units() {
	STEP="systemd units"
	if [ -e "$D$UNIT_DIR/$TARGET" ]; then
		if [ -n "$LIVE_SYSTEMD" ]; then
			run systemctl stop "$TARGET"
			say "stopped $TARGET (the core stops the carriage first)"
		fi
		run systemctl ${ROOT_ARG:+"$ROOT_ARG"} --quiet disable "$TARGET"
		say "disabled $TARGET"
	fi
	for unit in $UNITS; do
		run rm -f "$D$UNIT_DIR/$unit" "$D$UNIT_DIR/multi-user.target.wants/$unit"
	done
	[ -n "$LIVE_SYSTEMD" ] && run systemctl daemon-reload
	say "removed the units from $D$UNIT_DIR"
	for unit in $UNITS; do
		[ -d "$D$UNIT_DIR/$unit.d" ] && say "kept the drop-in directory $D$UNIT_DIR/$unit.d"
	done
	return 0
}

uninstall_files() {
	STEP="udev rules"
	for rule in $RULES; do
		run rm -f "$D$RULES_DIR/$rule"
	done
	if [ -z "$D" ] && command -v udevadm >/dev/null 2>&1; then
		udevadm control --reload || say "WARNING: udev did not reload; the rules are gone from the next boot"
	fi
	say "removed the udev rules from $D$RULES_DIR"
	STEP="sysusers file"
	run rm -f "$D$SYSUSERS_CONF"
	STEP="$OPT"
	run rm -rf "$D$OPT"
	say "removed $D$OPT (the agent, its venv and docs) and $D$SYSUSERS_CONF"
	STEP=""
	say "kept the configuration $D$CONF_DIR"
	[ -d "$D$DATA_DIR" ] && say "kept the data directory $D$DATA_DIR (database, keys, certificates)"
	say "kept the accounts oht-core, oht-gateway and the group $GROUP (they own the data directory)"
}

if [ "$ACTION" = install ]; then
	install_accounts
	install_agent
	install_config
	install_udev
	install_units
	STEP=""
	say "done"
else
	uninstall_units
	uninstall_files
	say "done"
fi
