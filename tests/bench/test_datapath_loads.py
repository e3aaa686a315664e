"""The load generators' parsers, fed output captured from real runs in a bench-dp lab."""

from __future__ import annotations

import json

import pytest

from datapath.loads import LoadError, duration_us, iperf_argv, parse_iperf, parse_stub_status, parse_wrk, wrk_argv

# wrk -t2 -c16 -d3s --latency, direct path (keep-alive).
WRK_KEEPALIVE = """\
Running 3s test @ http://10.244.1.3:8080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   414.89us  608.52us   7.89ms   91.12%
    Req/Sec    27.86k    11.24k   44.77k    53.33%
  Latency Distribution
     50%  266.00us
     75%  404.00us
     90%    0.90ms
     99%    3.33ms
  166030 requests in 3.00s, 24.23MB read
Requests/sec:  55272.58
Transfer/sec:      8.06MB
"""

# The same with -H 'Connection: close', through the stunnel pair.
WRK_CLOSE = """\
Running 3s test @ http://127.0.0.1:18080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.20ms    7.67ms  83.73ms   77.41%
    Req/Sec   397.65     45.89   490.00     65.00%
  Latency Distribution
     50%   18.85ms
     75%   23.75ms
     90%   29.26ms
     99%   45.56ms
  2379 requests in 3.00s, 343.84KB read
Requests/sec:    791.87
Transfer/sec:    114.45KB
"""

# wrk against nginx's stub_status server (404 for /).
WRK_NON_2XX = """\
Running 1s test @ http://127.0.0.1:8081/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    82.23us  224.41us   4.01ms   97.72%
    Req/Sec    31.85k    10.28k   46.45k    54.55%
  Latency Distribution
     50%   51.00us
     75%   70.00us
     90%   86.00us
     99%    1.05ms
  34801 requests in 1.10s, 10.22MB read
  Non-2xx or 3xx responses: 34801
Requests/sec:  31614.42
Transfer/sec:      9.29MB
"""

# wrk against a port that does not speak HTTP (haproxy -> iperf3): every read fails.
WRK_SOCKET_ERRORS = """\
Running 1s test @ http://127.0.0.1:15201/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 1.00s, 0.00B read
  Socket errors: connect 0, read 289, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

# iperf3 -c 127.0.0.1 -p 15201 -t 2 -J through the haproxy pair, cut to what the parser reads.
IPERF = {
    "start": {"version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 1, "blksize": 131072,
                                                        "omit": 0, "duration": 2, "bytes": 0, "blocks": 0}},
    "intervals": [],
    "end": {"sum_sent": {"start": 0, "end": 2.000099, "seconds": 2.000099, "bytes": 1011875840,
                         "bits_per_second": 4047303018.500584, "retransmits": 3, "sender": True},
            "sum_received": {"start": 0, "end": 2.001224, "seconds": 2.001224, "bytes": 1007255552,
                             "bits_per_second": 4026557954.5318265, "sender": True}},
}

# iperf3 -J with nothing listening.
IPERF_REFUSED = """{
	"start":	{
		"connected":	[],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44-fc-v509 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
	},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection refused"
}
"""

STUB_STATUS = ("Active connections: 1 \nserver accepts handled requests\n 2400 2400 2397 \n"
               "Reading: 0 Writing: 1 Waiting: 0 \n")


@pytest.mark.parametrize("text, us", [("266.00us", 266.0), ("0.90ms", 900.0), ("3.33ms", 3330.0),
                                      ("1.02s", 1_020_000.0), ("1.00m", 60_000_000.0), (" 45.56ms ", 45_560.0)])
def test_duration_us(text, us):
    assert duration_us(text) == pytest.approx(us)


@pytest.mark.parametrize("text", ["", "12", "3.3 ms", "-nan%", "1.0d"])
def test_duration_us_rejects(text):
    with pytest.raises(LoadError):
        duration_us(text)


def test_parse_wrk_keepalive():
    result = parse_wrk(WRK_KEEPALIVE)
    assert (result.requests, result.seconds, result.rps) == (166030, 3.0, 55272.58)
    assert result.latency_us == {"50": 266.0, "75": 404.0, "90": 900.0, "99": 3330.0}
    assert (result.socket_errors, result.non_2xx, result.errors) == ({}, 0, 0)


def test_parse_wrk_connection_close():
    result = parse_wrk(WRK_CLOSE)
    assert (result.requests, result.rps) == (2379, 791.87)
    assert result.latency_us["50"] == pytest.approx(18_850.0)
    assert result.latency_us["99"] == pytest.approx(45_560.0)


def test_parse_wrk_counts_non_2xx_and_socket_errors():
    assert parse_wrk(WRK_NON_2XX).non_2xx == 34801
    assert parse_wrk(WRK_NON_2XX).errors == 34801
    failed = parse_wrk(WRK_SOCKET_ERRORS)
    assert failed.requests == 0
    assert failed.socket_errors == {"connect": 0, "read": 289, "write": 0, "timeout": 0}
    assert failed.errors == 289


@pytest.mark.parametrize("text", ["", "unable to connect to 127.0.0.1:9 Connection refused",
                                  WRK_KEEPALIVE.replace("Requests/sec", "Requests per second"),
                                  WRK_KEEPALIVE.replace("     99%    3.33ms\n", "")])
def test_parse_wrk_rejects_what_is_not_a_finished_run(text):
    with pytest.raises(LoadError):
        parse_wrk(text)


def test_wrk_argv():
    assert wrk_argv("http://10.244.1.3:8080/", threads=2, connections=16, seconds=5, close=False) == [
        "wrk", "-t2", "-c16", "-d5s", "--latency", "--timeout", "2s", "http://10.244.1.3:8080/"]
    close = wrk_argv("http://127.0.0.1:18080/", threads=2, connections=16, seconds=2.5, close=True)
    assert close[3] == "-d2.5s"
    assert close[-3:] == ["-H", "Connection: close", "http://127.0.0.1:18080/"]


def test_parse_iperf_takes_the_receiver():
    result = parse_iperf(json.dumps(IPERF))
    assert result.gbit_s == pytest.approx(4.0266, abs=1e-4)
    assert result.sender_gbit_s == pytest.approx(4.0473, abs=1e-4)
    assert (result.bytes, result.retransmits) == (1007255552, 3)


def test_parse_iperf_errors():
    with pytest.raises(LoadError, match="Connection refused"):
        parse_iperf(IPERF_REFUSED)
    with pytest.raises(LoadError, match="JSON"):
        parse_iperf("iperf3: error - the server is busy running a test. try again later")
    with pytest.raises(LoadError, match="sum_received"):
        parse_iperf(json.dumps({"start": {}, "end": {}}))


def test_iperf_argv_is_one_bounded_stream():
    argv = iperf_argv("10.244.1.3", 5201, seconds=5)
    assert argv[:7] == ["iperf3", "-c", "10.244.1.3", "-p", "5201", "-t", "5"]
    assert "-J" in argv and "-P" not in argv and "--connect-timeout" in argv


def test_parse_stub_status():
    status = parse_stub_status(STUB_STATUS)
    assert (status.active, status.accepts, status.handled, status.requests) == (1, 2400, 2400, 2397)
    with pytest.raises(LoadError):
        parse_stub_status("<html>404 Not Found</html>")
