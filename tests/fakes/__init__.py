"""Fakes the root-free tests share, after wireguard-go's tun/tuntest and conn/bindtest: the code
under test runs unchanged, and the fakes stand only where the kernel would, carrying real bytes.

  device   FakeDevice: a TUN/TAP as a driver sees one (a descriptor, one packet per read or
           write); the test plays the pods behind it
  network  LoopbackTransport: a driver's sockets for one in-process host on a loopback address
           of its own (host k at 127.0.0.k), real UDP between the hosts, no root
  packets  IPv4 packets to put through them, and what a router does to one (TTL - 1), written
           independently of weft's kernels
  netlink  FakeNetlink: the netlink socket of NetlinkBatch over a kernel that keeps routes and
           neighbours
  rpc      RpcError: a gRPC error of a chosen status and details, as the etcd client raises

Import the module you need (`from fakes.device import FakeDevice`): each loads only what its
fake stands in front of.
"""
