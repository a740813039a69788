"""An idle asyncio event loop (main thread in epoll_wait with no timeout).

Usage: asyncio_idle.py
Prints "READY <pid> <port>"; serves TCP connections, answering each line with
"ECHO <line>"; a line "quit" stops the loop and exits with status 0.
"""

import asyncio
import os


async def main():
    done = asyncio.Event()

    async def handle(reader, writer):
        line = (await reader.readline()).strip()
        writer.write(b"ECHO " + line + b"\n")
        await writer.drain()
        writer.close()
        if line == b"quit":
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print("READY", os.getpid(), port, flush=True)
    await done.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
