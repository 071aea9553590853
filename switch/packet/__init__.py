"""The packet path, sans-IO: reasons, the peer table, the numba batch kernels with their
readable Python twins, TSO split / GRO coalesce, the scapy slow path, and the Pipeline that binds
them for every driver (daemon, replay, trace)."""
