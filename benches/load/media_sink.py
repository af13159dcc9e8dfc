#!/usr/bin/env python3
"""Bind the UDP ports SIPp advertises for its calls' media and never read them.

SIPp plays RTP from a pcap through raw sockets and binds no socket on the
[auto_media_port] its SDP names. The gateway's RTP to those ports then comes
back as ICMP port-unreachable, one per packet, and on loopback the kernel
handles each one in the sender's own system call, walking every raw socket
SIPp holds (one per call): 15-30 % of the gateway's CPU in `make load` was
that, a cost no real network puts on the sender. Bound sockets that are not
read drop the packets silently once their buffer is full, as a far end that
is not listening behind a network would cost us nothing.

The load scripts use it with FAR_END=sink (benches/load/far_end.sh); by
default they drop these packets as sent instead, which also spares the sender
the delivery and SIPp's raw sockets' copies.

usage: media_sink.py FIRST_PORT COUNT   (runs until killed)
"""
import resource
import signal
import socket
import sys

first, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = min(hard, count + 64)
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
held = []
for port in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
print(f"media sink: {len(held)} ports from {first}", file=sys.stderr, flush=True)
stop = {signal.SIGTERM, signal.SIGINT}
signal.pthread_sigmask(signal.SIG_BLOCK, stop)
signal.sigwait(stop)
