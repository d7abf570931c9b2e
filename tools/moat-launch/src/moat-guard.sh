#!/bin/sh
# moat-guard: holds a service sidecar's network namespace. Runs with CAP_NET_ADMIN, which the
# sidecar sharing the namespace does not have, so the sidecar can neither change nor undo
# these rules: connections in to the service's port (MOAT_GUARD_PORT) and their replies,
# loopback (but not Docker's resolver at 127.0.0.11); nothing else in or out, IPv6 not at
# all. Any failure stops the guard, and the sidecar is never started.
set -eu

die() {
	echo "moat-guard: $*" >&2
	exit 125
}

port=${MOAT_GUARD_PORT:-}
case "$port" in *[!0-9]* | "") die "bad service port '$port'" ;; esac

rules4="*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport $port -j ACCEPT
-A OUTPUT -d 127.0.0.11/32 -j DROP
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -p tcp -m tcp --sport $port -m state --state ESTABLISHED -j ACCEPT
COMMIT
"
rules6="*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
COMMIT
"
apply() {
	fam=$1
	rules=$2
	for t in "$fam-restore" "$fam-legacy-restore"; do
		if command -v "$t" >/dev/null 2>&1 && printf '%s' "$rules" | "$t" -w 5 2>/dev/null; then
			return 0
		fi
	done
	return 1
}
apply iptables "$rules4" || die "cannot set the firewall (iptables failed)"
if [ -e /proc/net/if_inet6 ]; then
	apply ip6tables "$rules6" || die "cannot set the IPv6 firewall (ip6tables failed)"
fi
echo "moat-guard: ready"
exec sleep infinity
