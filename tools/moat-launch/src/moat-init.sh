#!/bin/sh
# moat-init: the container's entrypoint. Runs as root with CAP_NET_ADMIN, closes the network
# to everything but the run's proxy, then drops every capability and becomes moatuser for
# good (no_new_privs) before any user code runs. Any failure here stops the container:
# a run never starts with an open network.
set -eu

die() {
	echo "moat-init: $*" >&2
	exit 125
}

addr=${MOAT_PROXY_ADDR:-}
[ -n "$addr" ] || die "no proxy address given; refusing to start with an open network"
ip=${addr%:*}
port=${addr##*:}

# Docker's embedded resolver (127.0.0.11) forwards to the host's resolvers: no DNS at all.
firewall() {
	t=$1
	$t -w 5 -P OUTPUT DROP &&
		$t -w 5 -F OUTPUT &&
		$t -w 5 -A OUTPUT -d 127.0.0.11 -j DROP &&
		$t -w 5 -A OUTPUT -o lo -j ACCEPT &&
		$t -w 5 -A OUTPUT -p tcp -d "$ip" --dport "$port" -j ACCEPT &&
		$t -w 5 -A OUTPUT -m state --state ESTABLISHED,RELATED -j ACCEPT
}
firewall6() {
	t=$1
	$t -w 5 -P OUTPUT DROP &&
		$t -w 5 -F OUTPUT &&
		$t -w 5 -A OUTPUT -o lo -j ACCEPT
}

ok=
for t in iptables iptables-legacy; do
	if command -v $t >/dev/null 2>&1 && firewall $t 2>/dev/null; then
		ok=$t
		break
	fi
done
[ -n "$ok" ] || die "cannot set the network firewall (iptables failed); refusing to start"
if [ -e /proc/net/if_inet6 ]; then
	ok6=
	for t in ip6tables ip6tables-legacy; do
		if command -v $t >/dev/null 2>&1 && firewall6 $t 2>/dev/null; then
			ok6=1
			break
		fi
	done
	[ -n "$ok6" ] || die "cannot set the IPv6 firewall (ip6tables failed); refusing to start"
fi

# The moat CA (public certificate only), trusted by the system store for this container.
if [ -r /run/moat/ca.crt ]; then
	cp /run/moat/ca.crt /usr/local/share/ca-certificates/moat-ca.crt 2>/dev/null || true
	cat /run/moat/ca.crt >>/etc/ssl/certs/ca-certificates.crt
fi

unset MOAT_PROXY_ADDR
export HOME=/home/moatuser USER=moatuser LOGNAME=moatuser

uid=$(id -u moatuser) && gid=$(id -g moatuser) || die "the image has no moatuser"
drop() {
	setpriv --reuid="$uid" --regid="$gid" --init-groups \
		--inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
}

if [ -n "${MOAT_PRE_RUN:-}" ]; then
	hook=$MOAT_PRE_RUN
	unset MOAT_PRE_RUN
	cd /workspace
	drop /bin/sh -c "$hook" || die "pre_run hook failed (exit $?)"
fi
unset MOAT_PRE_RUN

[ $# -gt 0 ] || set -- /bin/bash
cd /workspace 2>/dev/null || cd /
exec setpriv --reuid="$uid" --regid="$gid" --init-groups \
	--inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
