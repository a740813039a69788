"""What heapspy shows people and scripts: one dump loaded once (``dump.Dump``), and the
renderers over it and over live sessions (report, diff, flame graph, top, status), which
share ``base``. The CLI only parses options and calls one of them."""
