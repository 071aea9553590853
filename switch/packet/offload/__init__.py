"""TUN/TAP and UDP offloads: TSO split, GRO coalesce, UDP-tunnel GSO, the virtio header."""
