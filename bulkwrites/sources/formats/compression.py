"""Compressed files: gzip and Zstandard read transparently, as a stream, within a decompressed-size limit.

Compression is told by the first bytes (gzip ``1f 8b``, zstd ``28 b5 2f fd``), never by the name
alone: ``export.json.gz`` renamed ``export.json`` is still read, and a plain file named ``.gz`` is
read as it is. Every format can be compressed (DynamoDB's export to S3 writes ``.json.gz``).

What keeps a compressed file bounded (a "gzip bomb" is a few KB that inflate to terabytes):

* nothing is ever decompressed whole: :class:`DecompressingReader` hands out at most the bytes asked
  for (gzip and zstd both decompress into a bounded output buffer), the reader after it streams;
* the bytes decompressed are counted as they are read, and past ``max_decompressed_bytes``
  (``BULKWRITES_MAX_DECOMPRESSED_BYTES``) reading stops with a message naming the setting;
* a zstd frame may ask for a window of at most :data:`ZSTD_MAX_WINDOW_BYTES` of memory;
* XLSX needs a seekable zip: a compressed workbook is spooled to a temporary file by the XLSX
  reader, within the upload cap (``max_bytes``) like a workbook read from any other stream.

bzip2 and xz are recognised and refused with a message saying what to do.
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import IO, Any

from bulkwrites.sources.formats.common import CHUNK_SIZE, SourceError, size_text
from bulkwrites.sources.formats.limits import Limits

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
MAGIC_BYTES = 6  # enough of the head to tell every format above

COMPRESSIONS = {"gzip": "gzip", "zstd": "Zstandard"}
_SUFFIXES = {"gz": "gzip", "gzip": "gzip", "tgz": "gzip", "zst": "zstd", "zstd": "zstd"}
# zstd's own default limit (windowLog 27): every level up to --ultra -22 and --long fits.
ZSTD_MAX_WINDOW_BYTES = 1 << 27


def compression_of(head: bytes) -> str | None:
    """ "gzip", "zstd" or None (not compressed) from a file's first bytes; bzip2 and xz are refused."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_BZIP2_MAGIC) and head[3:4] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"):
        raise SourceError(
            "The file is bzip2-compressed, which is not read here: compress it with gzip or zstd instead."
        )
    if head.startswith(_XZ_MAGIC):
        raise SourceError("The file is xz-compressed, which is not read here: compress it with gzip or zstd instead.")
    return None


def without_compression_suffix(file_name: str) -> str:
    """``export.json.gz`` -> ``export.json`` (the name the format is told from); other names as given."""
    stem, dot, ext = file_name.rpartition(".")
    if dot and stem and ext.lower() in _SUFFIXES:
        return stem + (".tar" if ext.lower() == "tgz" else "")
    return file_name


def decompressed_too_large(limit: int, compression: str) -> SourceError:
    return SourceError(
        f"The {COMPRESSIONS[compression]} file decompresses to more than {size_text(limit)} (the limit is "
        f"{Limits.setting('max_decompressed_bytes')}); reading stopped there: it may be a compression bomb. "
        "Raise the limit if the file is genuine."
    )


class PeekReader:
    """A binary stream whose first bytes can be looked at without being consumed (any stream: S3 bodies too)."""

    def __init__(self, stream: IO[bytes] | Any) -> None:
        self._stream = stream
        self._buffer = b""

    def peek(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self._stream.read(size - len(self._buffer))
            if not data:
                break
            self._buffer += data
        return self._buffer[:size]

    def read(self, size: int = -1) -> bytes:
        # A first read as long as asked (buffer + more), as from the stream itself: readers look for a
        # BOM or a top-level character in their first chunk.
        if not self._buffer:
            return self._stream.read(size) or b""
        if 0 <= size <= len(self._buffer):
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data
        data, self._buffer = self._buffer, b""
        return data + (self._stream.read(-1 if size < 0 else size - len(data)) or b"")


class DecompressingReader:
    """Reads the decompressed bytes of a gzip or zstd stream; never more than asked at once, nor than the limit."""

    def __init__(self, source: Any, compression: str, limit: int) -> None:
        self.compression = compression
        self.count = 0  # decompressed bytes handed out
        self._limit = limit
        self._file: Any
        if compression == "gzip":
            self._file = gzip.GzipFile(fileobj=source, mode="rb")
        else:
            self._file = _ZstdStream(source)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))
        # Ask for one byte past the limit at most: crossing it is noticed without inflating further.
        size = min(size, self._limit - self.count + 1)
        try:
            data: bytes = self._file.read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise _corrupt(self.compression, exc) from None
        except Exception as exc:
            if type(exc).__name__ == "ZstdError":  # zstandard.ZstdError, without importing zstandard for gzip
                raise _corrupt(self.compression, exc) from None
            raise
        self.count += len(data)
        if self.count > self._limit:
            raise decompressed_too_large(self._limit, self.compression)
        return data


class _ZstdStream:
    """zstd frames decompressed as a stream, within a bounded output per step, truncation noticed.

    zstandard's ``stream_reader`` ends quietly when the input stops in the middle of a frame (a cut
    upload would lose rows silently) and its ``decompressobj`` has no output limit; so input is fed
    to a ``decompressobj`` :data:`_SLICE` bytes at a time: a zstd block of at least 4 bytes
    unpacks to at most 128 KB, so one step never makes more than ~8 MB, whatever the file.
    """

    _SLICE = 256

    def __init__(self, source: Any) -> None:
        import zstandard  # only zstd files need it

        self._decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW_BYTES)
        self._frame = self._decompressor.decompressobj()
        self._in_frame = False  # bytes of the current frame were fed
        self._source = source
        self._input = b""
        self._at = 0
        self._output = b""

    def read(self, size: int) -> bytes:
        while len(self._output) < size:
            if self._at >= len(self._input):
                self._input, self._at = self._source.read(CHUNK_SIZE) or b"", 0
                if not self._input:
                    if self._in_frame:
                        raise EOFError("the zstd data ends inside a frame")
                    break
            piece = self._input[self._at : self._at + self._SLICE]
            self._at += len(piece)
            self._in_frame = True
            self._output += self._frame.decompress(piece)
            if self._frame.eof:  # a frame ended: the next one (if any) starts with what was left over
                rest = self._frame.unused_data
                self._frame = self._decompressor.decompressobj()
                self._in_frame = False
                self._input, self._at = rest + self._input[self._at :], 0
        data, self._output = self._output[:size], self._output[size:]
        return data


def _corrupt(compression: str, exc: BaseException) -> SourceError:
    name = COMPRESSIONS[compression]
    if isinstance(exc, EOFError):
        return SourceError(f"The {name} file ends before its end marker: it is truncated (was the upload cut short?).")
    detail = str(exc).strip().rstrip(".") or type(exc).__name__
    if "too much memory" in detail or "window" in detail.lower():
        detail = f"its frames need more than {size_text(ZSTD_MAX_WINDOW_BYTES)} of memory to decompress ({detail})"
    return SourceError(f"The {name} file is corrupt: {detail[:200]}.")


def open_decompressed(stream: IO[bytes] | Any, limits: Limits) -> tuple[Any, str | None]:
    """(a stream of the file's content, its compression or None), reading from the stream's position.

    An uncompressed seekable stream is handed back as it is (rewound to where it was), so XLSX can
    still open it directly; other streams come back wrapped to replay the bytes looked at.
    """
    seekable = False
    try:
        seekable = bool(stream.seekable())
        start = stream.tell() if seekable else 0
    except (AttributeError, OSError, ValueError):
        seekable = False
    if seekable:
        head = stream.read(MAGIC_BYTES) or b""
        stream.seek(start)
        source: Any = stream
    else:
        source = PeekReader(stream)
        head = source.peek(MAGIC_BYTES)
    compression = compression_of(head)
    if compression is None:
        return source, None
    return DecompressingReader(source, compression, limits.max_decompressed_bytes), compression


def decompressed_head(raw_head: bytes, size: int) -> tuple[bytes, str | None]:
    """The first ``size`` bytes of content from the first bytes of a file (perhaps cut short), and its compression.

    For telling the format of a file from its head only (an upload's first 64 KB, a ranged GET of an S3
    object): a head that ends inside the compressed data gives what it decompresses to so far.
    """
    compression = compression_of(raw_head)
    if compression is None:
        return raw_head[:size], None
    reader = DecompressingReader(io.BytesIO(raw_head), compression, size + MAGIC_BYTES)
    pieces: list[bytes] = []
    got = 0
    while got < size:
        try:
            piece = reader.read(min(4096, size - got))
        except SourceError as exc:
            if pieces or "truncated" in str(exc):
                break  # cut short (a head), or corrupt further on: what came so far is the head
            raise
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces), compression
