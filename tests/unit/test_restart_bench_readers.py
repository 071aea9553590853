"""The restart bench's readers: hand-over times from weft's log, TCP figures from iperf3."""

from __future__ import annotations

import json

import pytest

from weft.tools.lab.restart_bench import handover_times, tcp_figures

RELOAD_LOG = """\
2026-01-01 10:00:00,000 INFO weft: received SIGHUP, reloading
2026-01-01 10:00:00,100 INFO weft.daemon: SIGHUP: reloading; compiling the installed code
2026-01-01 10:00:01,500 INFO weft.daemon: reloading: handing devices and sockets to the new weft run
2026-01-01 10:00:01,510 INFO weft: re-executing ['run'] with weft.1-device
a line without a stamp
2026-01-01 10:00:02,250 INFO weft.drivers.mode_fallback: datapath fast: numba loops
"""

RESTART_LOG = """\
2026-01-01 10:00:00,000 INFO weft: received SIGTERM, shutting down
2026-01-01 10:00:00,300 INFO weft.daemon: stopping; keeping lease 10.1.5.0/24
2026-01-01 10:00:01,000 INFO weft.drivers.mode_fallback: datapath fast: numba loops
2026-01-01 10:00:02,000 INFO weft.drivers.mode_fallback: datapath fast: numba loops
"""


def test_a_reload_gap_runs_from_the_hand_over_to_the_new_datapath() -> None:
    (times,) = handover_times(RELOAD_LOG)
    assert times["gap"] == pytest.approx(0.75)
    assert times["overlap"] == pytest.approx(1.5)  # SIGHUP to the hand-over


def test_a_restart_has_no_overlap_and_a_datapath_line_alone_is_no_hand_over() -> None:
    assert handover_times(RESTART_LOG) == [{"gap": pytest.approx(0.7), "overlap": 0.0}]


def _interval(end: float, mbit: float, retransmits: int, seconds: float = 0.5) -> dict:
    return {"sum": {"end": end, "seconds": seconds, "bits_per_second": mbit * 1e6,
                    "retransmits": retransmits}}


def test_tcp_figures_set_the_worst_interval_beside_the_steady_rate() -> None:
    report = {"intervals": [_interval(0.5, 900, 0), _interval(1.0, 1000, 1),
                            _interval(1.5, 100, 5), _interval(2.0, 950, 2),
                            _interval(2.1, 1, 0, seconds=0.1)],
              "error": "interrupt - the client has terminated"}
    figures = tcp_figures(json.dumps(report), settle=1.0)
    assert figures == {"worst_mbit_s": pytest.approx(100), "steady_mbit_s": pytest.approx(950),
                       "retransmits": 8, "error": None}


def test_a_reset_stream_or_no_report_is_an_error() -> None:
    reset = {"intervals": [_interval(0.5, 900, 0)], "error": "unable to send: reset by peer"}
    assert tcp_figures(json.dumps(reset))["error"] == "unable to send: reset by peer"
    assert tcp_figures("")["error"] == "no iperf3 report"
