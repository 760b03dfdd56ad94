"""What the benchmarks' wrk scripts share: the report wrk prints at the end, as one JSON line.

Not a benchmark itself (the Makefile runs only bench/*.py without a leading underscore).
"""

# wrk counts latency in microseconds; `non_2xx` and the socket errors tell a refused load from a served one.
REPORT_LUA = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""
