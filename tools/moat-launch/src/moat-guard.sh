#!/bin/sh
# moat-guard: holds a network namespace that a container from an untrusted image joins (a
# service sidecar, or the run's own container). Runs with CAP_NET_ADMIN from moat's guard
# image, which the container sharing the namespace does not have, so it can neither change
# nor undo these rules. Any failure stops the guard, and the container is never started.
#
# MOAT_GUARD_MODE=service (the default; MOAT_GUARD_PORT): connections in to the service's
# port and their replies, loopback (but not Docker's resolver at 127.0.0.11); nothing else in
# or out, IPv6 not at all.
# MOAT_GUARD_MODE=run (MOAT_PROXY_ADDR=ip:port, MOAT_SERVICE_ADDRS=ip:port,...): out to the
# run's proxy and to each sidecar's address and port, loopback (but not 127.0.0.11), replies;
# nothing else out, IPv6 only on loopback. In is open, so the hostname router reaches the
# run's `ports:`.
# MOAT_GUARD_MODE=spare: started ahead of any run (guard.rs, spare guards): everything
# closed (loopback aside) until one line "PROXY_IP:PORT NONCE" arrives on the fifo
# /run/moat-guard/in (a private host directory), then the run mode's rules for that proxy,
# and "moat-guard: ready NONCE". It reads one line, once: nothing can reconfigure it later.
set -eu

die() {
	echo "moat-guard: $*" >&2
	exit 125
}

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
mode=${MOAT_GUARD_MODE:-service}
nonce=""
if [ "$mode" = spare ]; then
	closed="*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
COMMIT
"
	apply iptables "$closed" || die "cannot set the firewall (iptables failed)"
	if [ -e /proc/net/if_inet6 ]; then
		apply ip6tables "$closed" || die "cannot set the IPv6 firewall (ip6tables failed)"
	fi
	echo "moat-guard: waiting"
	read -r MOAT_PROXY_ADDR nonce </run/moat-guard/in || die "no settings arrived"
	case "$nonce" in *[!0-9a-f]* | "") die "bad nonce" ;; esac
	MOAT_SERVICE_ADDRS=""
	mode=run
fi

case "$mode" in
service)
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
	;;
run)
	addr=${MOAT_PROXY_ADDR:-}
	ip=${addr%:*}
	port=${addr##*:}
	case "$ip" in *[!0-9.]* | "") die "bad proxy address '$addr'" ;; esac
	case "$port" in *[!0-9]* | "") die "bad proxy port in '$addr'" ;; esac
	services=""
	for sa in $(printf '%s' "${MOAT_SERVICE_ADDRS:-}" | tr ',' ' '); do
		sip=${sa%:*}
		sport=${sa##*:}
		case "$sip" in *[!0-9.]* | "") die "bad service address $sa" ;; esac
		case "$sport" in *[!0-9]* | "") die "bad service port in $sa" ;; esac
		services="$services-A OUTPUT -d $sip/32 -p tcp -m tcp --dport $sport -j ACCEPT
"
	done
	rules4="*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A OUTPUT -d 127.0.0.11/32 -j DROP
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -d $ip/32 -p tcp -m tcp --dport $port -j ACCEPT
$services-A OUTPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
"
	rules6="*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A OUTPUT -o lo -j ACCEPT
COMMIT
"
	;;
*) die "bad mode '$mode'" ;;
esac

apply iptables "$rules4" || die "cannot set the firewall (iptables failed)"
if [ -e /proc/net/if_inet6 ]; then
	apply ip6tables "$rules6" || die "cannot set the IPv6 firewall (ip6tables failed)"
fi
echo "moat-guard: ready${nonce:+ $nonce}"
exec sleep infinity
