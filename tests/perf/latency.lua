-- Prints wrk's summary as one JSON line (wrk's --latency omits p99.9).
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"bytes":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.bytes, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
