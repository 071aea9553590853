"""weft: a userspace overlay-network switch for container hosts, interoperable with flannel.

Rooms: control/ (leases, config, etcd), packet/ (the sans-IO pipeline), dev/ (TUN/TAP, sockets),
drivers/ (loops that move packets), host/ (netlink, repair, iptables: the host's kernel),
observe/ (metrics, control socket, trace, doctor), backends/ (vxlan, udp, host-gw, alloc),
tools/ (replay, trace; lab/ for demo, bench and tests). daemon.py wires them for `weft run`,
cli.py is the command line.
"""
