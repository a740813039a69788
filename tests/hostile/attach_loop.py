"""Attach to one target N times in a row, in one process (so that strace can slow it).

Usage: attach_loop.py PID N METHOD
Each round opens a session (as ``heapspy attach`` does) and detaches at once. Prints one
JSON line: {"attached": k, "errors": {"exit code": count, ...}, "messages": [...]}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from heapspy.config import AttachConfig
from heapspy.errors import HeapspyError
from heapspy.session import Session


def main() -> None:
    pid, rounds, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    config = AttachConfig(
        attach_timeout=1.0,
        interval=0.2,
        method=method,
        final_dump=False,
        dump_dir=Path("/nonexistent-heapspy-dumps"),
    )
    attached = 0
    errors: dict[str, int] = {}
    messages: list[str] = []
    for _ in range(rounds):
        try:
            session = Session.attach(pid, config)
        except HeapspyError as exc:
            errors[str(exc.exit_code)] = errors.get(str(exc.exit_code), 0) + 1
            if len(messages) < 20:
                messages.append(exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 - a crash is a finding: count it, go on
            errors["crash"] = errors.get("crash", 0) + 1
            messages.append(f"{type(exc).__name__}: {exc}")
            continue
        attached += 1
        session.detach()
    print(json.dumps({"attached": attached, "errors": errors, "messages": messages}))


if __name__ == "__main__":
    main()
