"""Main thread blocked in accept() on a TCP socket.

Usage: accept_server.py
Prints "READY <pid> <port>"; answers each connection's first line with "ECHO <line>";
a line "quit" ends it with status 0.
"""

import os
import socket


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    print("READY", os.getpid(), server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            line = conn.makefile("rb").readline().strip()
            conn.sendall(b"ECHO " + line + b"\n")
        if line == b"quit":
            return


if __name__ == "__main__":
    main()
