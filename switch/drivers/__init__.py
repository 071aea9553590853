"""Drivers: the loops that move packets between a device and the sockets through the Pipeline
(the compiled libc loop and the Python loop), with the libc intrinsics they use."""
