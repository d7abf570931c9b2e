#!/bin/sh
# moat-init: the container's entrypoint. Runs as root, sets up the container (CA, terminal,
# Docker socket group, the agent's files, secrets, volumes, pre_run), then drops every
# capability and becomes moatuser for good (no_new_privs) before any user code runs. Any
# failure here stops the container.
# It does not set the network's firewall, and cannot (the container has neither NET_ADMIN
# nor NET_RAW): this script and every tool it calls come from the run's image, which build
# hooks and install scripts write. The run's firewall is set by its guard (moat-guard, from
# moat's own guard image), whose network namespace the container joins (guard.rs).
set -eu

die() {
	echo "moat-init: $*" >&2
	exit 125
}

# The moat CA (public certificate only), trusted by the system store for this container.
if [ -r /run/moat/ca.crt ]; then
	cp /run/moat/ca.crt /usr/local/share/ca-certificates/moat-ca.crt 2>/dev/null || true
	cat /run/moat/ca.crt >>/etc/ssl/certs/ca-certificates.crt
fi

# An interactive run starts with the size of the terminal that started it.
if [ -n "${MOAT_TTY_SIZE:-}" ] && [ -t 0 ]; then
	stty rows "${MOAT_TTY_SIZE% *}" cols "${MOAT_TTY_SIZE#* }" 2>/dev/null || true
fi
# docker:host: moatuser joins the group that owns the mounted Docker socket.
if [ -n "${MOAT_DOCKER_GID:-}" ]; then
	case "$MOAT_DOCKER_GID" in *[!0-9]*) die "bad MOAT_DOCKER_GID" ;; esac
	g=$(getent group "$MOAT_DOCKER_GID" | cut -d: -f1)
	if [ -z "$g" ]; then
		groupadd -g "$MOAT_DOCKER_GID" moat-docker || die "cannot create the Docker socket's group"
		g=moat-docker
	fi
	usermod -aG "$g" moatuser || die "cannot give moatuser the Docker socket's group"
fi
unset MOAT_PROXY_ADDR MOAT_TTY_SIZE MOAT_SERVICE_ADDRS MOAT_DOCKER_GID
# Exec tracing's one-time token: for the tracer only (not the pre_run hook), kept unexported.
exec_token=${MOAT_EXEC_TOKEN:-}
exec_required=${MOAT_EXEC_REQUIRED:-}
unset MOAT_EXEC_TOKEN MOAT_EXEC_REQUIRED
export HOME=/home/moatuser USER=moatuser LOGNAME=moatuser

uid=$(id -u moatuser) && gid=$(id -g moatuser) || die "the image has no moatuser"

# An agent's HOME files (placeholders only), staged by the launcher.
if [ -d /run/moat/agent-home ]; then
	cp -R /run/moat/agent-home/. "$HOME"/ || die "cannot set up the agent's files in $HOME"
	chown -R "$uid:$gid" "$HOME" || die "cannot give $HOME to moatuser"
fi
# Decoy credentials (decoys.rs): not secrets, valid nowhere; written into the agent's home
# (never the workspace) as if they were real, one PATH=BASE64 a word. A file the agent's
# files already have (a grant's placeholder) is left alone.
if [ -n "${MOAT_DECOY_FILES:-}" ]; then
	set -f
	for item in $MOAT_DECOY_FILES; do
		rel=${item%%=*}
		case "$rel" in
		.aws/credentials | .config/gh/hosts.yml | .env) ;;
		*) die "a bad decoy file name" ;;
		esac
		[ -e "$HOME/$rel" ] && continue
		mkdir -p "$(dirname "$HOME/$rel")" || die "cannot place a decoy in $HOME"
		printf '%s' "${item#*=}" | base64 -d >"$HOME/$rel" || die "cannot place a decoy in $HOME"
		chmod 600 "$HOME/$rel"
	done
	set +f
	chown -R "$uid:$gid" "$HOME" || die "cannot give $HOME to moatuser"
	unset item rel
fi
unset MOAT_DECOY_FILES
drop() {
	setpriv --reuid="$uid" --regid="$gid" --init-groups \
		--inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
}

# secrets: are not in the container's configuration: fetched once from the run's supervisor
# (one NAME=BASE64 a line) and exported for the pre_run hook and the command. No file holds them.
if [ -n "${MOAT_SECRETS_TOKEN:-}" ]; then
	resp=$(curl -sf --noproxy '*' --max-time 30 --unix-socket /run/moat/secrets/secrets.sock \
		-H "Authorization: Bearer $MOAT_SECRETS_TOKEN" http://moat/secrets) ||
		die "cannot fetch the run's secrets from its supervisor; refusing to start without them"
	unset MOAT_SECRETS_TOKEN
	set -f
	for item in $resp; do
		name=${item%%=*}
		case "$name" in "" | [0-9]* | *[!A-Za-z0-9_]*) die "a bad secret name from the supervisor" ;; esac
		# The x keeps a value's trailing newlines from the command substitution.
		value=$(printf '%s' "${item#*=}" | base64 -d && printf x) || die "cannot decode the secret $name"
		export "$name=${value%x}"
	done
	set +f
	unset resp item name value
fi
unset MOAT_SECRETS_TOKEN

# A fresh Docker volume (volumes: with type: volume) belongs to root: give its top to moatuser.
set -f
for t in ${MOAT_VOLUME_CHOWN:-}; do
	if [ -d "$t" ] && [ "$(stat -c %u "$t")" = 0 ]; then
		chown "$uid:$gid" "$t" || die "cannot hand volume $t to moatuser"
	fi
done
set +f
unset MOAT_VOLUME_CHOWN

if [ -n "${MOAT_PRE_RUN:-}" ]; then
	hook=$MOAT_PRE_RUN
	unset MOAT_PRE_RUN
	cd /workspace
	drop /bin/sh -c "$hook" || die "pre_run hook failed (exit $?)"
fi
unset MOAT_PRE_RUN

[ $# -gt 0 ] || set -- /bin/bash
cd /workspace 2>/dev/null || cd /
set -- setpriv --reuid="$uid" --regid="$gid" --init-groups \
	--inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
# Exec tracing (moat-launch's exectrace.rs): the host's moat-exectrace, mounted read-only,
# stays root without capabilities and traces the command and all it starts. It is linked
# against the host's C library: an image it cannot run in is refused when tracing is
# required (tracing.disable_exec: false), else the run goes on untraced, and says so.
if [ -n "$exec_token" ]; then
	if /run/moat/moat-exectrace --check >/dev/null 2>&1; then
		export MOAT_EXEC_TOKEN="$exec_token" MOAT_EXEC_REQUIRED="$exec_required"
		exec /run/moat/moat-exectrace --agent-uid "$uid" -- "$@"
	fi
	why="moat-exectrace does not run in this image (it needs a C library like the host's)"
	[ "$exec_required" != 1 ] || die "exec tracing cannot start: $why; set tracing.disable_exec: true to run untraced"
	echo "moat: WARNING: exec tracing cannot start: $why; this run records no exec trace" >&2
fi
unset exec_token exec_required
exec "$@"
