"""Serving live sessions over HTTP the way a Go service serves itself: ``/debug/pprof/``
for profile scrapers (``go tool pprof``, Grafana Alloy, Parca) and ``/metrics`` for
Prometheus. Everything is served from heapspy's side, from what the sessions already
hold, so a scrape costs the worker nothing."""
