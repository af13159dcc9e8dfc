# Sourced by the load scripts: where the server's RTP to SIPp goes.
#
# SIPp plays its RTP from a pcap through raw sockets (one per call) and binds
# nothing on the media ports its SDP names. On one box every packet the server
# sends there is delivered by the kernel inside the server's own send call:
# loopback receive, a UDP lookup, an ICMP port-unreachable if nothing is bound,
# and a copy for each of SIPp's raw IPPROTO_UDP sockets (`raw_local_deliver`:
# 14.5 % of the gateway's CPU samples at 200 calls). A far end behind a
# network costs the sender none of that. Two ways to give SIPp such a far end:
#
#   FAR_END=drop (the default where `unshare -n` works, i.e. as root, and `tc`
#     is installed): the run gets its own network namespace, whose loopback
#     drops UDP to SIPp's media ports (MEDIA_PORT.. +8191) at the sending
#     qdisc, as a network interface would take them: the sender pays for the
#     send and nothing after it.
#   FAR_END=sink: media_sink.py binds the ports and never reads them (no ICMP;
#     the delivery and the raw-socket copies are still on the sender).
#
# Usage: source this file and call `far_end_enter SCRIPT "$@"` first (SCRIPT
# relative to the repository root: it re-runs the script inside a new
# namespace when needed), then `far_end_start COUNT` before SIPp starts and
# `far_end_stop` after it ends; `far_end_report` says what the far end was.

MEDIA_PORT=49152 # 0xC000: a block of 8,192 ports one u32 filter matches

far_end_enter() {
  FAR_END=${FAR_END:-}
  if [ -z "$FAR_END" ]; then
    if [ -n "${VOICEGATE_LOAD_NETNS:-}" ] || { command -v tc >/dev/null && unshare -n true 2>/dev/null; }; then
      FAR_END=drop
    else
      FAR_END=sink
    fi
  fi
  export FAR_END
  if [ "$FAR_END" = drop ] && [ -z "${VOICEGATE_LOAD_NETNS:-}" ]; then
    # The namespace (and the qdisc in it) goes away with the last process in it.
    exec unshare -n env VOICEGATE_LOAD_NETNS=1 bash "$PWD/$1" "${@:2}"
  fi
  if [ "$FAR_END" = drop ] && [ -z "${VOICEGATE_LOAD_NETNS_READY:-}" ]; then
    ip link set lo up
    # Nothing but SIPp's media may land in the dropped block: keep the
    # namespace's ephemeral ports below it.
    echo "20000 32767" >/proc/sys/net/ipv4/ip_local_port_range
    tc qdisc add dev lo root handle 1: htb default 10 r2q 100000
    tc class add dev lo parent 1: classid 1:10 htb rate 100gbit
    tc class add dev lo parent 1: classid 1:20 htb rate 100gbit
    tc qdisc add dev lo parent 1:20 handle 20: pfifo limit 0
    tc filter add dev lo parent 1: protocol ip prio 1 u32 \
      match ip protocol 17 0xff match ip dport $MEDIA_PORT 0xe000 flowid 1:20
    export VOICEGATE_LOAD_NETNS_READY=1
  fi
}

far_end_start() {
  FAR_END_SINK=
  if [ "$1" -gt 8192 ]; then
    echo "far end: $1 media ports asked for, the block holds 8,192 (about 2,000 calls)" >&2
    return 1
  fi
  if [ "$FAR_END" = sink ]; then
    python3 benches/load/media_sink.py "$MEDIA_PORT" "$1" &
    FAR_END_SINK=$!
  fi
}

far_end_stop() {
  if [ -n "${FAR_END_SINK:-}" ]; then
    kill -TERM "$FAR_END_SINK" 2>/dev/null || true
    wait "$FAR_END_SINK" 2>/dev/null || true
  fi
  FAR_END_SINK=
}

# What the run's far end was, for its report.
far_end_report() {
  if [ "$FAR_END" = drop ]; then
    local n
    n=$(tc -s qdisc show dev lo 2>/dev/null | grep -A1 '^qdisc pfifo 20:' | grep -o 'dropped [0-9]*' | grep -o '[0-9]*')
    echo "far end: own network namespace, ${n:-?} packets to SIPp's media ports dropped as sent"
  else
    echo "far end: media sink on SIPp's ports (loopback delivery on the sender)"
  fi
}
