#!/usr/bin/env bash
# make demo: builds the local VPC (e2e/vpc.sh), runs a few curl requests
# from the client namespace through gwlbsim (GWLB) and flowdog, shows what
# interception looks like from both ends, and tears everything down on exit
# (Enter, Ctrl-C, or at once when stdin is not a terminal). Needs root.
set -Eeuo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export E2E_RUN_DIR=${E2E_RUN_DIR:-/tmp/flowdog-e2e}
RUN=$E2E_RUN_DIR
ROOT=$RUN/state/root.pem
WEB4=www.example:443:198.51.100.10
WEB6='www.example:443:[2001:db8:2::10]'

[[ $(id -u) -eq 0 ]] || {
	echo "demo: needs root (network namespaces, a TUN device, raw sockets): sudo make demo" >&2
	exit 1
}

teardown() {
	trap - EXIT INT TERM
	echo
	echo "demo: tearing the local VPC down"
	"$E2E_DIR/vpc.sh" down >/dev/null 2>&1 || true
}
trap teardown EXIT
trap 'exit 130' INT TERM

# step TITLE CMD: prints what runs, then runs it. The demo goes on when a
# step fails: its output says what went wrong.
BOLD='' PLAIN=''
if [[ -t 1 ]]; then
	BOLD=$'\033[1m' PLAIN=$'\033[0m'
fi
step() {
	printf '\n%s== %s%s\n$ %s\n' "$BOLD" "$1" "$PLAIN" "$2"
	bash -o pipefail -c "$2" || printf '(exit status %d)\n' "$?"
}

echo "demo: building the local VPC: namespaces client, gateway (gwlbsim as GWLB), appliance (flowdog), internet (nginx)"
"$E2E_DIR/vpc.sh" up 2>&1 | grep -v '^  \|Try:$' || true

step "HTTP: flowdog adds X-Gwlb-* headers to the response (and to the request: nginx echoes what it got)" \
	"ip netns exec client curl -si --resolve www.example:80:198.51.100.10 http://www.example/headers | grep -Ei '^(HTTP|x-gwlb|vpce)'"

step "HTTPS over HTTP/2: the certificate curl accepts comes from flowdog's CA (curl trusts only flowdog's root)" \
	"ip netns exec client curl -sv --cacert $ROOT --resolve $WEB4 https://www.example/headers 2>&1 | grep -Ei '^\* +(subject|issuer):|using HTTP/2|^< x-gwlb|^vpce'"

step "The chain flowdog presented: a leaf for www.example, its intermediate, signed by the root in $ROOT" \
	"ip netns exec client curl -s -o /dev/null --cacert $ROOT --resolve $WEB4 -w '%{certs}' https://www.example/ | grep -E '^(Subject|Issuer):'"

step "IPv6, HTTP/1.1" \
	"ip netns exec client curl -sv --http1.1 --cacert $ROOT --resolve $WEB6 https://www.example/headers 2>&1 | grep -Ei '^\* +issuer:|^< x-gwlb|^vpce'"

step "SNI passthrough (tls.passthrough_sni): nginx's own certificate, nothing added" \
	"ip netns exec client curl -sv --cacert $RUN/pki/ca.pem --resolve passthrough.example:443:198.51.100.10 https://passthrough.example/headers 2>&1 | grep -Ei '^\* +issuer:|^< x-gwlb|^vpce'"

step "Fast path (TCP 8000 is outside the intercept rule): reflected untouched, no headers" \
	"ip netns exec client curl -si --resolve www.example:8000:198.51.100.10 http://www.example:8000/headers | grep -Ei '^(HTTP|x-gwlb|vpce)'"

step "DROP rule (TCP 8081): the SYN is answered with a RST" \
	"ip netns exec client curl -sS --max-time 5 --resolve www.example:8081:198.51.100.10 http://www.example:8081/"

step "What nginx logged (X-Gwlb-* as received from flowdog)" \
	"tail -n 6 $RUN/logs/nginx-access.log"

step "flowdog's packet counters, by verdict" \
	"ip netns exec appliance curl -s http://127.0.0.1:9090/metrics | grep '^flowdog_gwlb_packets_total'"

step "gwlbsim's counters: what it sent, received and found wrong (contract violations)" \
	"ip netns exec gateway curl -s http://127.0.0.1:9091/stats; echo"

cat <<EOF

Where to look while it runs:
  metrics   ip netns exec appliance curl -s http://127.0.0.1:9090/metrics
  gwlbsim   ip netns exec gateway curl -s http://127.0.0.1:9091/stats
  logs      $RUN/logs/ (flowdog.log, gwlbsim.log, nginx-access.log, ...)
  root CA   $ROOT
  a shell   ip netns exec client bash   (curl --cacert $ROOT --resolve $WEB4 https://www.example/)
EOF

if [[ -t 0 ]]; then
	read -r -p $'\nPress Enter to tear the local VPC down. ' _ || true
fi
