#!/usr/bin/env bash
# The local VPC of the end-to-end suite and the demo: four network
# namespaces joined by veth pairs, with gwlbsim playing GWLB between them.
#
#   client     192.0.2.10/24     2001:db8:1::10/64   a VPC instance (curl)
#   internet   198.51.100.10/24  2001:db8:2::10/64   nginx, e2e-servers
#   gateway    .1 of both, 203.0.113.1/24            gwlbsim on tun0 (GWLB)
#   appliance  203.0.113.2/24                        flowdog
#
# The gateway forwards between client and internet, but policy routing
# sends every packet that arrives from either side into tun0, where gwlbsim
# wraps it in Geneve and sends it to flowdog (203.0.113.2:6081). What
# flowdog returns, gwlbsim checks and writes back into tun0; the kernel
# routes it on by the main table. Only documentation ranges are used, and
# nothing leaves the machine.
#
# Usage (as root):
#   vpc.sh up             build everything and start all daemons (idempotent)
#   vpc.sh down           stop the daemons and remove the namespaces (idempotent)
#   vpc.sh start NAME     start one daemon: nginx, servers, gwlbsim, flowdog
#   vpc.sh stop NAME      stop one daemon (SIGTERM, then SIGKILL after 15 s)
#
# Environment: E2E_RUN_DIR (default /tmp/flowdog-e2e) holds configs, PKI,
# logs, pid files and flowdog's state; E2E_BIN (default bin/ of the repo)
# holds flowdog, gwlbsim and e2e-servers (`make e2e-up` builds them).
set -Eeuo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$E2E_DIR")
RUN=${E2E_RUN_DIR:-/tmp/flowdog-e2e}
BIN=${E2E_BIN:-$REPO/bin}

NAMESPACES=(client gateway appliance internet)
# GWLB's limit on the inner packet; the links carrying inner packets use
# it, so that nothing the simulator must carry is larger.
INNER_MTU=8500
# The GWLB <-> appliance link carries Geneve: 8,500 + 68 bytes of outer
# headers fit in AWS's jumbo frames.
OUTER_MTU=9001
ENDPOINT_ID=vpce-0123456789abcdef0
ATTACHMENT_ID=0a77ac4000000001

log() { printf 'vpc: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

nsx() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

require() {
	[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN device, raw sockets)"
	local c
	for c in ip nginx curl sysctl; do
		command -v "$c" >/dev/null || die "$c is not installed (apt-get install -y iproute2 nginx curl procps)"
	done
	for c in flowdog gwlbsim e2e-servers; do
		[[ -x $BIN/$c ]] || die "$BIN/$c is missing: run make e2e-up (it builds it)"
	done
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

# --- network -----------------------------------------------------------------

build_network() {
	local ns
	for ns in "${NAMESPACES[@]}"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		# Before any link exists, so that every link inherits them: no
		# duplicate address detection (addresses are usable at once, tests
		# do not race it), no reverse-path filter (the gateway receives
		# replies on tun0 from addresses routed elsewhere).
		nsx "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
			net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	done

	ip link add gw0 netns client mtu "$INNER_MTU" type veth peer name to-client netns gateway mtu "$INNER_MTU"
	ip link add gw0 netns internet mtu "$INNER_MTU" type veth peer name to-internet netns gateway mtu "$INNER_MTU"
	ip link add gwlb0 netns appliance mtu "$OUTER_MTU" type veth peer name to-appliance netns gateway mtu "$OUTER_MTU"
	# Neighbour solicitations retried after 100 ms instead of 1 s: see
	# warm_up.
	nsx client sysctl -qw net.ipv6.neigh.gw0.retrans_time_ms=100
	nsx internet sysctl -qw net.ipv6.neigh.gw0.retrans_time_ms=100
	nsx gateway sysctl -qw net.ipv6.neigh.to-client.retrans_time_ms=100 net.ipv6.neigh.to-internet.retrans_time_ms=100

	ip -n client addr add 192.0.2.10/24 dev gw0
	ip -n client addr add 2001:db8:1::10/64 dev gw0 nodad
	ip -n client link set gw0 up
	ip -n client route add default via 192.0.2.1
	ip -n client -6 route add default via 2001:db8:1::1

	ip -n internet addr add 198.51.100.10/24 dev gw0
	ip -n internet addr add 2001:db8:2::10/64 dev gw0 nodad
	ip -n internet link set gw0 up
	ip -n internet route add default via 198.51.100.1
	ip -n internet -6 route add default via 2001:db8:2::1

	ip -n appliance addr add 203.0.113.2/24 dev gwlb0
	ip -n appliance link set gwlb0 up

	ip -n gateway addr add 192.0.2.1/24 dev to-client
	ip -n gateway addr add 2001:db8:1::1/64 dev to-client nodad
	ip -n gateway addr add 198.51.100.1/24 dev to-internet
	ip -n gateway addr add 2001:db8:2::1/64 dev to-internet nodad
	ip -n gateway addr add 203.0.113.1/24 dev to-appliance
	local l
	for l in to-client to-internet to-appliance; do
		ip -n gateway link set "$l" up
	done
	nsx gateway sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

	# A persistent TUN device (bare IP packets, `ip tuntap`'s default):
	# routes can point at it before gwlbsim attaches, and it survives a
	# restart of the simulator.
	ip -n gateway tuntap add dev tun0 mode tun
	ip -n gateway link set tun0 mtu "$INNER_MTU" up
	nsx gateway sysctl -qw net.ipv4.conf.tun0.rp_filter=0
	# GWLB's route table: whatever arrives from the client or the internet
	# goes to GWLB (tun0). What gwlbsim writes into tun0 arrives with iif
	# tun0, matches no rule, and the main table delivers it. Packets for the
	# gateway's own addresses (neighbour discovery) stay local: the local
	# table is looked up first.
	local fam
	for fam in -4 -6; do
		ip -n gateway "$fam" route add default dev tun0 table 100
		ip -n gateway "$fam" rule add iif to-client lookup 100 pref 1000
		ip -n gateway "$fam" rule add iif to-internet lookup 100 pref 1000
	done
}

# The first neighbour solicitation a fresh namespace sends for its IPv6
# router goes unanswered (measured: the client's first IPv6 connection then
# took 1 s, one SYN retransmission, before any daemon was involved). Resolve
# both routers once here, so that no test measures it. A connection to a
# closed port of the router is answered with a RST once the neighbour is
# known.
warm_up() {
	local ns gw
	for ns in client internet; do
		for gw in 192.0.2.1 198.51.100.1 '[2001:db8:1::1]' '[2001:db8:2::1]'; do
			nsx "$ns" curl -s -o /dev/null --connect-timeout 3 "http://$gw:1/" || true
		done
	done
}

# --- daemons -----------------------------------------------------------------

pidfile() { printf '%s/pids/%s.pid' "$RUN" "$1"; }

# alive PID: the process exists and has not exited. A daemon we started
# is reparented to init when this script ends, and an exited one stays a
# zombie until init reaps it (seconds, in some containers): kill -0 alone
# would call it running.
alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]]
}

running() {
	local f
	f=$(pidfile "$1")
	[[ -f $f ]] || return 1
	alive "$(<"$f")"
}

# spawn NAME NS CMD...: runs CMD in NS from the run directory, logging to
# logs/NAME.log, and records its pid (`ip netns exec` execs CMD, so $! is
# CMD's pid).
spawn() {
	local name=$1 ns=$2
	shift 2
	running "$name" && die "$name is already running (pid $(<"$(pidfile "$name")"))"
	(cd "$RUN" && exec ip netns exec "$ns" "$@" </dev/null >>"$RUN/logs/$name.log" 2>&1) &
	echo "$!" >"$(pidfile "$name")"
}

# wait_for NAME DESC CMD...: retries CMD for 30 s while NAME runs.
wait_for() {
	local name=$1 desc=$2 i
	shift 2
	for ((i = 0; i < 300; i++)); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		running "$name" || die "$name exited during start-up; see $RUN/logs/$name.log: $(tail -n 5 "$RUN/logs/$name.log" 2>/dev/null)"
		sleep 0.1
	done
	die "$name: $desc not ready after 30 s; see $RUN/logs/$name.log"
}

start_nginx() {
	sed "s|@RUN@|$RUN|g" "$E2E_DIR/nginx.conf" >"$RUN/nginx/nginx.conf"
	spawn nginx internet nginx -e "$RUN/logs/nginx-error.log" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
	wait_for nginx "http://198.51.100.10/" nsx internet curl -sf -o /dev/null http://198.51.100.10/
}

start_servers() {
	spawn servers internet "$BIN/e2e-servers" serve
	wait_for servers "upload sink" nsx internet curl -sf -o /dev/null -d x http://127.0.0.1:8090/
}

start_gwlbsim() {
	spawn gwlbsim gateway "$BIN/gwlbsim" --tun tun0 --gwlb 203.0.113.1 --appliance 203.0.113.2:6081 \
		--endpoint-id "$ENDPOINT_ID" --attachment-id "$ATTACHMENT_ID" --stats-listen 127.0.0.1:9091
	wait_for gwlbsim "stats on 127.0.0.1:9091" nsx gateway curl -sf -o /dev/null http://127.0.0.1:9091/stats
}

start_flowdog() {
	spawn flowdog appliance "$BIN/flowdog" run --config "$E2E_DIR/flowdog.yaml"
	wait_for flowdog "health on 127.0.0.1:8080" nsx appliance curl -sf -o /dev/null http://127.0.0.1:8080/healthz
}

start() {
	case $1 in
	nginx | servers | gwlbsim | flowdog) "start_$1" ;;
	*) die "unknown daemon $1 (nginx, servers, gwlbsim, flowdog)" ;;
	esac
	log "$1 running (pid $(<"$(pidfile "$1")"), log $RUN/logs/$1.log)"
}

# kill_wait PID: SIGTERM, then SIGKILL if it is still there after 15 s
# (flowdog drains for shutdown.drain first).
kill_wait() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 150; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM for 15 s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

stop() {
	local f
	f=$(pidfile "$1")
	if running "$1"; then
		kill_wait "$(<"$f")"
		log "$1 stopped"
	fi
	rm -f "$f"
}

# --- up / down -----------------------------------------------------------------

down() {
	local name ns pid
	for name in flowdog gwlbsim servers nginx; do
		[[ -d $RUN/pids ]] && stop "$name"
	done
	for ns in "${NAMESPACES[@]}"; do
		ns_exists "$ns" || continue
		# Whatever still runs in our namespaces was started here (a lost
		# pid file, an interrupted start): those pids, and only those.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			# Never ourselves or our caller (a test that entered the
			# namespace on one of its threads).
			[[ $pid == "$$" || $pid == "$PPID" ]] && continue
			kill_wait "$pid"
		done
		ip netns del "$ns"
	done
	# The large test files are not worth keeping; logs are.
	rm -rf "$RUN/www" "$RUN/pids"
}

up_failed() {
	local rc=$?
	trap - EXIT INT TERM
	log "start-up failed (status $rc): cleaning up"
	down || true
	exit "$rc"
}

up() {
	require
	down
	# An interrupted or failed start-up (any error, die, a signal) leaves
	# nothing behind.
	trap up_failed EXIT
	trap 'exit 130' INT TERM

	rm -rf "$RUN/logs" "$RUN/state" "$RUN/nginx" "$RUN/pki"
	mkdir -p "$RUN"/{logs,pids,state,www,pki,nginx/{body,proxy,fastcgi,uwsgi,scgi}}
	"$BIN/e2e-servers" certs "$RUN/pki"
	printf 'hello from nginx in the internet namespace\n' >"$RUN/www/index.html"

	build_network
	warm_up
	log "namespaces ${NAMESPACES[*]} up"
	start nginx
	start servers
	start gwlbsim
	start flowdog
	trap - EXIT INT TERM
	cat >&2 <<EOF
vpc: up. Try:
  ip netns exec client curl --cacert $RUN/state/root.pem --resolve www.example:443:198.51.100.10 -sv https://www.example/
  flowdog metrics:  ip netns exec appliance curl -s http://127.0.0.1:9090/metrics | grep flowdog_gwlb_packets
  gwlbsim counters: ip netns exec gateway curl -s http://127.0.0.1:9091/stats
  logs:             $RUN/logs/
EOF
}

main() {
	[[ $# -ge 1 ]] || die "usage: $0 up|down|start NAME|stop NAME"
	case $1 in
	up) up ;;
	down)
		[[ $(id -u) -eq 0 ]] || die "needs root"
		down
		;;
	start | stop)
		[[ $# -eq 2 ]] || die "usage: $0 $1 NAME"
		require
		"$1" "$2"
		;;
	*) die "usage: $0 up|down|start NAME|stop NAME" ;;
	esac
}

main "$@"
