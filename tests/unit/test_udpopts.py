import socket

from weft.dev.udpopts import SOL_UDP, UDP_GRO, enable_udp_gro, probe_udp_offloads


def test_probe_reports_both_options():
    found = probe_udp_offloads()
    assert set(found) == {"udp_segment", "udp_gro"}
    assert all(isinstance(v, bool) for v in found.values())


def test_enable_udp_gro_sets_the_option_and_keeps_the_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ok = enable_udp_gro(sock.fileno())
        assert ok == probe_udp_offloads()["udp_gro"]
        if ok:
            assert sock.getsockopt(SOL_UDP, UDP_GRO) == 1
        sock.bind(("127.0.0.1", 0))  # still open and usable after the call


def test_enable_udp_gro_on_a_non_udp_socket_is_false():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert enable_udp_gro(sock.fileno()) is False
