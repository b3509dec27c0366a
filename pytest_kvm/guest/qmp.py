"""QMP through the transport: qemu.qmp (QEMU's own library) behind a synchronous helper."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from qemu.qmp import EventListener, QMPClient
from qemu.qmp.error import QMPError

from ..errors import KvmError
from ..transport import Stream

log = logging.getLogger("pytest_kvm.guest")


class QmpError(KvmError):
    pass


class QmpTimeout(QmpError):
    """QEMU did not answer a QMP command in time: it hangs (or its host is starved)."""


class QmpEventTimeout(QmpError):
    """An awaited QMP event did not come in time."""


class Qmp:
    """Synchronous QMP client for fixtures. Every exchange is kept in ``log`` (for reports)."""

    KEEP = 1000  # events kept unconsumed at most (the oldest go first)

    def __init__(self, stream: Stream, name: str, timeout: float = 30,
                 connect_timeout: float | None = None):
        self.name = name
        self.timeout = timeout
        self.log: list[str] = []
        self._kept: list[dict] = []  # events received while waiting for another one
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"qmp-{name}")
        self._thread.start()
        self._client = QMPClient(name)
        self._events = EventListener()
        self._client.register_listener(self._events)
        self._stream = stream
        try:
            self._call(self._client.connect(stream.as_socket()), connect_timeout or timeout)
        except BaseException:
            self.close()
            raise

    def _call(self, coro, timeout: float | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout or self.timeout)
        except TimeoutError as exc:
            future.cancel()
            raise QmpTimeout(f"{self.name}: QMP did not answer within "
                           f"{timeout or self.timeout:g} s") from exc
        except QMPError as exc:
            raise QmpError(f"{self.name}: QMP: {exc}") from exc

    def execute(self, command: str, timeout: float | None = None, oob: bool = False,
                **arguments: Any) -> Any:
        """A command and its answer. ``oob``: out of band, answered even while QEMU's main
        loop is busy (a postcopy destination blocked on a missing page), for the commands
        QEMU allows so (migrate-pause, migrate-recover), where the monitor offers it."""
        args = {k.replace("_", "-"): v for k, v in arguments.items()}
        oob = oob and self.oob
        log.info("%s: QMP %s%s %s", self.name, command, " (oob)" if oob else "",
                 json.dumps(args) if args else "")
        kind = "exec-oob" if oob else "execute"
        self.log.append(f"-> {json.dumps({kind: command, 'arguments': args})}")
        try:
            result = self._call(self._client.execute(command, args or None, oob=oob), timeout)
        except QmpError as exc:
            self.log.append(f"<- error: {exc}")
            raise
        self.log.append(f"<- {json.dumps(result)}")
        return result

    @property
    def oob(self) -> bool:
        """Whether out-of-band execution was negotiated (QEMU offers it on socket monitors)."""
        greeting = self._client.greeting
        return bool(greeting and "oob" in greeting.QMP.capabilities)

    def history(self) -> list[dict]:
        """Every event received since connect, oldest first (consumed by event() or not)."""
        return [dict(e) for e in self._events.history]

    def event(self, name: str, timeout: float | None = None, **match: Any) -> dict:
        """The first event called ``name`` whose data has the ``match`` items (e.g.
        ``device="hp0"``). Events that arrived since connect count; the ones this wait does
        not consume are kept for a later wait (none is lost)."""
        def wanted(event: dict) -> bool:
            data = event.get("data", {})
            return event["event"] == name and all(data.get(k) == v for k, v in match.items())

        for i, event in enumerate(self._kept):
            if wanted(event):
                return self._kept.pop(i)
        deadline = time.monotonic() + (timeout or self.timeout)

        async def next_event():
            while True:
                event = dict(await self._events.get())
                self.log.append(f"<- event {json.dumps(event)}")
                log.info("%s: QMP event %s %s", self.name, event["event"],
                         json.dumps(event.get("data", {})))
                if wanted(event):
                    return event
                self._kept.append(event)
                del self._kept[:-self.KEEP]

        async def until_deadline():
            try:
                return await asyncio.wait_for(next_event(), deadline - time.monotonic())
            except TimeoutError:
                return None

        event = self._call(until_deadline(), deadline - time.monotonic() + 5)
        if event is None:
            wanted_data = f" with {json.dumps(match)}" if match else ""
            raise QmpEventTimeout(f"{self.name}: no {name} event{wanted_data} within "
                                  f"{timeout or self.timeout:g} s")
        return event

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.disconnect(), 5)
        except Exception:
            pass
        self._stream.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
