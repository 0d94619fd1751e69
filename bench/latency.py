"""A TCP proxy on loopback that delivers every byte a fixed delay after it arrived, each way: a
network's latency in front of a loopback server (Linux's netem is not on every machine), so
`make bench` can show what a remote origin's round trips cost where they are not free.

The delay is applied per direction (a round trip costs twice `delay`); order is kept, bandwidth
is not limited. The proxy runs in one thread of the benchmark's own process.
"""
from __future__ import annotations

import asyncio
import socket
import threading


class DelayProxy:
    def __init__(self, target_port: int, delay: float):
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server = None

    def start(self) -> "DelayProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close():
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, server_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer),
                             return_exceptions=True)

    async def _pump(self, reader, writer):
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(1 << 16):
                # call_later keeps the order of equal delays: bytes leave in the order they came
                loop.call_later(self.delay, self._write, writer, data)
        finally:
            loop.call_later(self.delay, self._close, writer)

    @staticmethod
    def _write(writer, data):
        if not writer.is_closing():
            writer.write(data)

    @staticmethod
    def _close(writer):
        if not writer.is_closing():
            writer.close()
