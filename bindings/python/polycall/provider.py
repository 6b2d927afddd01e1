"""The provider: registers methods with a runtime and serves the calls routed to them."""

from __future__ import annotations

from typing import Optional

from . import frame as F
from .connection import Connection, Handler, IncomingCall, Payload, Settings
from .errors import UnknownMethodError


class Provider:
    """Serves methods on a connection to a runtime.

    Add methods with :meth:`add_method`, then :meth:`start` registers them (REGISTER)
    and serving begins; calls run concurrently, each in its own task. The connection
    can also make calls (:attr:`client`).
    """

    def __init__(self, endpoint: str, settings: Optional[Settings] = None) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._methods: dict[str, tuple[Handler, F.MethodEntry]] = {}
        self.connection: Optional[Connection] = None

    @classmethod
    async def connect(cls, endpoint: str, settings: Optional[Settings] = None) -> "Provider":
        """Connects to the runtime at ``HOST:PORT``; nothing is registered yet."""
        p = cls(endpoint, settings)
        p.connection = await Connection.open(endpoint, settings, p._dispatch)
        return p

    def add_method(self, full_name: str, handler: Handler, *, summary: str = "", input_hint: str = "",
                   output_hint: str = "", idempotent: bool = False) -> None:
        """Adds ``SERVICE.METHOD``, served by ``handler(call) -> Payload | bytes``.
        Registered by :meth:`start` (or at once when already started: call
        :meth:`start` again)."""
        if not F.valid_full_name(full_name):
            raise ValueError(f"{full_name!r} is not a valid SERVICE.METHOD name")
        self._methods[full_name] = (
            handler, F.MethodEntry(full_name, idempotent, summary, input_hint, output_hint))

    @property
    def methods(self) -> list[str]:
        """The methods added."""
        return list(self._methods)

    async def start(self, timeout: float = 10.0) -> None:
        """Registers every method added so far; raises the runtime's refusal (for
        example :class:`polycall.AlreadyExistsError` for a runtime's own name)."""
        if self.connection is None:
            self.connection = await Connection.open(self.endpoint, self.settings, self._dispatch)
        await self.connection.register([e for _, e in self._methods.values()], timeout)

    async def serve_forever(self) -> None:
        """Returns when the connection to the runtime ends."""
        if self.connection is not None:
            await self.connection.wait_closed()

    async def close(self) -> None:
        """Closes the connection (calls in flight are abandoned)."""
        if self.connection is not None:
            self.connection.close("the provider stopped")
            await self.connection.wait_closed()

    async def _dispatch(self, call: IncomingCall) -> Payload | bytes:
        entry = self._methods.get(call.method)
        if entry is None:
            raise UnknownMethodError(f"this provider does not serve {call.method}")
        return await entry[0](call)

    @property
    def client(self):  # noqa: ANN201 - avoids an import cycle in the annotation
        """A :class:`polycall.Client` over the provider's own connection."""
        from .client import Client

        assert self.connection is not None, "connect first"
        return Client(self.connection)
