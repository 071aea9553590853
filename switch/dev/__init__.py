"""Devices and sockets: TUN/TAP opening (plain or with virtio-net offloads) and UDP socket
options."""
