"""What a leased session may do with a phone: the four calls of TikMatrix's
custom-script API. Both drivers' phones answer them: `AdbPhone` from uiautomator2 and
adbutils, `SimPhone` from a simulated screen.

A call that fails because of what was asked raises `RemoteCallError` (the caller's 400);
a phone that went away raises `DeviceGoneError`; one that does not answer in time
raises `PhoneError` from the phone's own timeout.
"""

from __future__ import annotations

import random
import struct
import zlib
from typing import Any, Protocol, runtime_checkable

from fleet_agent.phone import PhoneError


class RemoteCallError(PhoneError):
    """The phone refused the call itself (unknown method, bad params, bad adb args)."""


@runtime_checkable
class RemotePhone(Protocol):
    async def rpc(self, method: str, params: Any, within: float) -> Any:
        """One UIAutomator2 JSON-RPC call; its `result`."""
        ...

    async def hierarchy(self, within: float) -> str: ...

    async def screenshot_png(self, within: float) -> bytes: ...

    async def adb(self, args: list[str], within: float) -> str:
        """`args` as adb's command line takes them after `-s <serial>`; only `shell`."""
        ...


def shell_words(args: list[str]) -> list[str]:
    """The words after `shell`, or the 400 saying which adb commands are served."""
    if not args or args[0] != "shell":
        first = args[0] if args else ""
        raise RemoteCallError(
            f"args[0]: adb {first!r} is not served; only 'shell' is (files and installs "
            "belong to the host's operator)"
        )
    if len(args) < 2:
        raise RemoteCallError("args: 'shell' needs a command after it")
    return args[1:]


def png(width: int, height: int, seed: int, noise_rows: int = 0) -> bytes:
    """A valid RGB PNG: a plain screen with `noise_rows` rows of seeded noise on top.

    Noise does not compress, so a simulated screenshot can be as large as a real
    phone's (over NATS's 1 MiB payload limit at the default size).
    """
    rng = random.Random(seed)
    base = bytes((30 + seed * 40) % 256 for _ in range(3)) * width
    rows = []
    for y in range(height):
        rows.append(b"\x00" + (rng.randbytes(width * 3) if y < noise_rows else base))
    raw = b"".join(rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )
