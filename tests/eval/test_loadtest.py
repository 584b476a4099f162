"""The load test of `lipstep serve` in small (3 streams x 3 s, the tiny model, a real loopback server): the server
stays up, every malformed request gets the 4xx it should, every stream completes in order, memory stays bounded."""

import os

import pytest
from tests.liveserver import live_server
from tests.tinypipe import tiny_pipeline

from lipstep.eval.loadtest import LoadConfig, format_markdown, run_loadtest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_small_load_test_keeps_the_server_up_and_refuses_every_malformed_request():
    with live_server(tiny_pipeline(), max_sessions=5, max_upload_mb=0.25, example_portraits=1) as url:
        report = run_loadtest(url, LoadConfig(sessions=3, seconds=3.0, drain_s=60), pid=os.getpid())
    s = report["summary"]
    assert s["server_up_at_end"] and s["health_failures"] == 0 and s["sessions_in_use_at_end"] == 0
    assert s["malformed_all_4xx"] and s["malformed_all_as_expected"], report["malformed"]
    assert len(report["malformed"]) == 12  # every kind was sent at least once
    assert s["sessions_complete"] == 3, report["sessions"]
    assert all(r["in_order"] and r["latency_p50_s"] > 0 for r in report["sessions"])
    assert s["rss_mb_peak"] - s["rss_mb_start"] < 300  # the whole test process: server, client and speech
    text = format_markdown(report, ["a note"])
    assert "| session |" in text and "- a note" in text
