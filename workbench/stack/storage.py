"""Content-addressed storage speaking the part of the Kubo (IPFS) RPC API a client needs.

`python -m workbench.stack.storage`, config (`WORKBENCH_COMPONENT`, JSON):
  port (0 = any free), data_dir (default: a temp dir removed on exit),
  max_upload_bytes (default 10 MiB), upload_latency_ms [lo, hi] (default [0, 0]), seed (optional),
  upload_memory_bytes (default 16 MiB): what uploads may hold in memory at once. An upload streams
  to a temp file through a 1 MiB buffer (hashed on the way, renamed to its CID at the end); only
  upload_memory_bytes / 1 MiB uploads read at a time, the others wait with their bytes still in
  the kernel's socket buffers. Reads stream from disk, so memory does not grow with the store;
  `pin/rm` also returns the heap uploads freed to the OS.
  faults {fail_rate, slow_rate, slow_ms: [lo, hi]} (optional): injected upload faults, drawn per
  upload. A failed upload answers 500 or 503 JSON after reading the body and stores nothing; a
  slow one waits slow_ms more.

Routes:
  POST /api/v0/add          multipart/form-data (not content-encoded), field `file`
                            -> {"Name", "Hash", "Size"} (Size a string)
  POST /api/v0/cat?arg=CID  the bytes (`arg` may also be `/ipfs/CID`)
  GET  /ipfs/{cid}          the bytes (gateway)
  POST /api/v0/pin/rm?arg=CID[&arg=CID…]  deletes the objects at once (Kubo only unpins and
                            leaves the bytes to its GC; here nothing else references them)
                            -> {"Pins": [CID…], "BytesFreed": N}; 404 (nothing removed) if any
                            is unknown
Gauges: objects, bytes, uploads, upload_errors (bad requests), removed, bytes_freed,
injected_failures, injected_slow.

CIDs are CIDv1, raw codec, sha2-256, base32 lower case: what Kubo answers with
`--cid-version=1 --raw-leaves` for a file that fits one block.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from aiohttp import BodyPartReader, hdrs, web

from workbench.errors import WorkbenchError
from workbench.stack.server import (
    ApiError,
    expect_content,
    make_app,
    query_arg,
    reading,
    run,
)

CID_VERSION_1 = 0x01
RAW_CODEC = 0x55
SHA2_256 = 0x12
SHA2_256_LENGTH = 32
MULTIBASE_BASE32 = "b"
CID_PREFIX = bytes([CID_VERSION_1, RAW_CODEC, SHA2_256, SHA2_256_LENGTH])
DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file part
READ_CHUNK = 64 * 1024
WRITE_CHUNK = 1024 * 1024  # what one upload buffers before writing it out
DEFAULT_UPLOAD_MEMORY = 16 * WRITE_CHUNK
TMP_PREFIX = ".tmp-"
STORE_KEY = web.AppKey("store", object)


# --- CIDs ---------------------------------------------------------------------------------------


def cid_for(data: bytes) -> str:
    """CIDv1 (raw, sha2-256) of `data` in multibase base32 lower case (`bafkrei…`)."""
    return _cid_of(hashlib.sha256(data).digest())


def _cid_of(digest: bytes) -> str:
    return MULTIBASE_BASE32 + base64.b32encode(CID_PREFIX + digest).decode().lower().rstrip("=")


def parse_cid(text: str) -> str:
    """The canonical CID in `text` (`CID` or `/ipfs/CID`); ValueError if it is not one we store."""
    cid = text.removeprefix("/ipfs/").strip("/")
    if not cid.startswith(MULTIBASE_BASE32) or not cid[1:].isalnum():
        raise ValueError("not a base32 CIDv1")
    body = cid[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        raise ValueError("not valid base32") from None
    if len(raw) != len(CID_PREFIX) + SHA2_256_LENGTH or not raw.startswith(CID_PREFIX):
        raise ValueError("not a CIDv1 raw sha2-256")
    return cid.lower()


# --- the store ----------------------------------------------------------------------------------


class ObjectStore:
    """Bytes on disk named by their CID. Writes go to a temp file renamed at the end (atomic), so
    concurrent identical uploads both succeed and readers never see a partial object. Methods
    block: call them in a thread."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def begin(self) -> PendingObject:
        """A new object written piece by piece; its CID is known once it is committed."""
        return PendingObject(self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}")

    def remove(self, cid: str) -> bool:
        try:
            (self.root / cid).unlink()
            return True
        except FileNotFoundError:
            return False

    def scan(self) -> dict[str, int]:
        """Sizes of the stored objects; drops temp files a crash left behind."""
        sizes = {}
        for path in self.root.iterdir():
            if path.name.startswith(TMP_PREFIX):
                path.unlink(missing_ok=True)
            elif path.is_file():
                sizes[path.name] = path.stat().st_size
        return sizes


class PendingObject:
    """An object being written to a temp file and hashed as it goes. Methods block."""

    def __init__(self, path: Path):
        self.path, self.size = path, 0
        self._hash = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 - closed by commit or discard

    def write(self, data: bytes | bytearray) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> str:
        """Renames the temp file to its CID (atomic; identical bytes stored once)."""
        self._file.close()
        cid = _cid_of(self._hash.digest())
        os.replace(self.path, self.path.with_name(cid))
        return cid

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


# --- injected faults ----------------------------------------------------------------------------


class StorageFaults:
    """The `faults` config: which uploads fail (500/503) and which are slowed, one draw each."""

    def __init__(self, config: dict | None, rng: random.Random):
        config = config or {}
        self.fail_rate = _rate(config, "fail_rate")
        self.slow_rate = _rate(config, "slow_rate")
        self.slow_ms = _range_ms(config.get("slow_ms", [0, 0]))
        self.rng = rng
        self.failures = self.slowed = 0

    def delay_s(self) -> float:
        """Extra latency for this upload (0 unless it drew a slow fault)."""
        if not self.slow_rate or self.rng.random() >= self.slow_rate:
            return 0.0
        self.slowed += 1
        return self.rng.uniform(*self.slow_ms) / 1000

    def failure(self) -> int | None:
        """The status this upload fails with, or None. Both say "retry later" to a client."""
        if not self.fail_rate or self.rng.random() >= self.fail_rate:
            return None
        self.failures += 1
        return self.rng.choice((500, 503))


def _rate(config: dict, name: str) -> float:
    value = config.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise WorkbenchError(f"faults.storage.{name}", f"{value!r} is not in 0..1", "use 0..1")
    return float(value)


def _range_ms(value) -> tuple[float, float]:
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not 0 <= value[0] <= value[1]:
        raise WorkbenchError("faults.storage.slow_ms", f"{value!r}", "use [lo, hi], 0 <= lo <= hi")
    return float(value[0]), float(value[1])


# --- the server ---------------------------------------------------------------------------------


class StorageServer:
    """Routes plus the gauges (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        max_upload_bytes: int,
        latency_ms,
        rng: random.Random,
        faults: StorageFaults | None = None,
        upload_memory_bytes: int = DEFAULT_UPLOAD_MEMORY,
    ):
        self.store, self.max_upload_bytes = store, max_upload_bytes
        self.readers = asyncio.Semaphore(max(1, upload_memory_bytes // WRITE_CHUNK))
        self.latency_ms, self.rng = (float(latency_ms[0]), float(latency_ms[1])), rng
        self.faults = faults or StorageFaults(None, rng)
        self.sizes = store.scan()  # the index, only touched on the event loop
        self.total_bytes = sum(self.sizes.values())
        self.uploads = self.upload_errors = self.removed = self.bytes_freed = 0

    def gauges(self) -> dict[str, int]:
        return {
            "objects": len(self.sizes),
            "bytes": self.total_bytes,
            "uploads": self.uploads,
            "upload_errors": self.upload_errors,
            "removed": self.removed,
            "bytes_freed": self.bytes_freed,
            "injected_failures": self.faults.failures,
            "injected_slow": self.faults.slowed,
        }

    async def add(self, request: web.Request) -> web.Response:
        try:
            expect_content(request, "multipart/form-data", encoded=False)
            async with self.readers:  # bounds the bytes all uploads hold in memory
                name, pending = await self._receive(request)
        except (ApiError, web.HTTPException):
            self.upload_errors += 1
            raise
        try:
            # Stands for network transfer and pinning latency of a remote storage provider.
            delay_ms = self.rng.uniform(*self.latency_ms)
            await asyncio.sleep(delay_ms / 1000 + self.faults.delay_s())
            # An injected failure comes after the transfer, as a provider's would: nothing stored.
            if (status := self.faults.failure()) is not None:
                raise ApiError(status, "storage unavailable (injected fault); retry later")
            cid = await asyncio.to_thread(pending.commit)
        except BaseException:
            pending.discard()
            raise
        if cid not in self.sizes:
            self.sizes[cid] = pending.size
            self.total_bytes += pending.size
        self.uploads += 1
        return web.json_response({"Name": name or cid, "Hash": cid, "Size": str(pending.size)})

    async def _receive(self, request: web.Request) -> tuple[str, PendingObject]:
        """The `file` part, spooled to disk; other parts are read and dropped."""
        limit = self.max_upload_bytes + MULTIPART_SLACK
        if (request.content_length or 0) > limit:
            raise ApiError(413, f"upload larger than {self.max_upload_bytes} bytes")
        with reading():
            try:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    # A nested multipart (a directory, to Kubo) has no name: not a file for us.
                    if isinstance(part, BodyPartReader) and part.name == "file":
                        return part.filename or "", await self._spool(part)
                    await part.release()
                    if request.content.total_bytes > limit:
                        raise ApiError(413, f"upload larger than {self.max_upload_bytes} bytes")
            except (ValueError, KeyError, AssertionError) as e:
                raise ApiError(400, f"malformed multipart body: {e}") from None
        raise ApiError(400, "missing multipart field 'file'")

    async def _spool(self, part: BodyPartReader) -> PendingObject:
        pending = await asyncio.to_thread(self.store.begin)
        try:
            buffer = bytearray()
            while chunk := await part.read_chunk(READ_CHUNK):
                buffer += chunk
                if pending.size + len(buffer) > self.max_upload_bytes:
                    raise ApiError(413, f"upload larger than {self.max_upload_bytes} bytes")
                if len(buffer) >= WRITE_CHUNK:
                    await asyncio.to_thread(pending.write, buffer)
                    buffer.clear()
            await asyncio.to_thread(pending.write, buffer)
        except BaseException:
            pending.discard()
            raise
        return pending

    async def cat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(_cid_arg(query_arg(request, "arg")))

    async def gateway(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(_cid_arg(request.match_info["cid"]))

    async def _serve(self, cid: str) -> web.StreamResponse:
        if cid not in self.sizes:
            raise ApiError(404, f"no object {cid}")
        # Streamed from disk (sendfile): a read costs no memory, however large the object.
        octets = {hdrs.CONTENT_TYPE: "application/octet-stream"}
        return web.FileResponse(self.store.root / cid, headers=octets)

    async def pin_rm(self, request: web.Request) -> web.Response:
        """Removes every CID given as `arg` (cleanup of a run's objects) and says what it freed."""
        query_arg(request, "arg")  # 400 when absent
        cids = list(dict.fromkeys(_cid_arg(arg) for arg in request.query.getall("arg")))
        unknown = [cid for cid in cids if cid not in self.sizes]
        if unknown:  # checked first, so a refused call removes nothing
            raise ApiError(404, f"no object {unknown[0]}")
        freed = sum(self.sizes.pop(cid) for cid in cids)
        self.total_bytes -= freed
        self.removed, self.bytes_freed = self.removed + len(cids), self.bytes_freed + freed
        for cid in cids:
            await asyncio.to_thread(self.store.remove, cid)
        release_freed_memory()
        return web.json_response({"Pins": cids, "BytesFreed": freed})


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (AttributeError, OSError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hands the heap that uploads freed back to the OS. glibc keeps it otherwise: 200
    concurrent 10 MiB uploads leave RSS ~120 MB above its start for good, trimmed ~3 MB."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _cid_arg(text: str) -> str:
    try:
        return parse_cid(text)
    except ValueError as e:
        raise ApiError(400, f"invalid CID {text[:80]!r}: {e}") from None


def build_app(config: dict) -> web.Application:
    data_dir = config.get("data_dir")
    owned_dir = data_dir is None
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="workbench-storage-"))
    max_upload = int(config.get("max_upload_bytes", DEFAULT_MAX_UPLOAD))
    seed = config.get("seed")
    server = StorageServer(
        ObjectStore(root),
        max_upload,
        config.get("upload_latency_ms", [0, 0]),
        random.Random(seed),
        # Its own stream, so injecting faults leaves the latency draws of a seeded run alone.
        StorageFaults(config.get("faults"), random.Random(None if seed is None else f"{seed}/f")),
        int(config.get("upload_memory_bytes", DEFAULT_UPLOAD_MEMORY)),
    )
    app = make_app(server.gauges, max_body=max_upload + MULTIPART_SLACK)
    app[STORE_KEY] = server
    app.router.add_post("/api/v0/add", server.add)
    app.router.add_post("/api/v0/cat", server.cat)
    app.router.add_get("/ipfs/{cid}", server.gateway)
    app.router.add_post("/api/v0/pin/rm", server.pin_rm)
    if owned_dir:
        app.on_cleanup.append(lambda _app: asyncio.to_thread(shutil.rmtree, root, True))
    return app


if __name__ == "__main__":
    run(build_app)
