"""Text encodings other than UTF-8: files are transcoded to UTF-8 as they stream, so every reader stays UTF-8.

The encoding is the operator's choice (the form's Encoding field, ``--encoding``), recorded on the
job and used by the preview and staging alike; UTF-8 is the default. One thing is detected rather
than chosen: with UTF-8 chosen, a file that starts with a UTF-16 byte-order mark and decodes as
lines of UTF-16 text is UTF-16 (Excel's "Unicode Text"), since those two bytes can never start a
UTF-8 file. XLSX declares its own encoding in its XML and ignores this.

A byte the encoding cannot decode stops reading with a message naming the byte, its offset in the
file and its line, and what to choose instead. ISO-8859-1 decodes every byte, so a wrong choice
there shows as wrong characters in the preview, not as an error.
"""

from __future__ import annotations

import codecs
from typing import Any

from bulkwrites.sources.formats.common import CHUNK_SIZE, SourceError

UTF8 = "utf-8"
ENCODINGS: dict[str, str] = {
    "utf-8": "UTF-8",
    "windows-1252": "Windows-1252 (Western European; Excel on Windows)",
    "iso-8859-1": "ISO-8859-1 (Latin-1)",
    "iso-8859-15": "ISO-8859-15 (Latin-9, with €)",
    "utf-16": "UTF-16 (byte order from its BOM)",
    "utf-16-le": "UTF-16 LE (no BOM)",
    "utf-16-be": "UTF-16 BE (no BOM)",
}
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
UTF16_SNIFF_BYTES = 4096  # of the head, to tell UTF-16 text behind a BOM
WRONG_ENCODING_ADVICE = (
    "Choose the file's encoding in the form's Encoding field (or `--encoding` in the CLI; Excel on Windows "
    "often saves Windows-1252), or save it as UTF-8."
)


def check_encoding(encoding: str) -> str:
    """The encoding's code, or SourceError naming the ones offered."""
    code = (encoding or UTF8).strip().lower().replace("_", "-")
    code = {"utf8": "utf-8", "latin-1": "iso-8859-1", "latin1": "iso-8859-1", "cp1252": "windows-1252"}.get(code, code)
    if code not in ENCODINGS:
        raise SourceError(f'Unknown encoding "{encoding[:40]}"; choose one of {", ".join(ENCODINGS)}.')
    return code


def effective_encoding(encoding: str, head: bytes) -> str:
    """The encoding to read with: the one chosen, or UTF-16 when the content is UTF-16 text with a BOM.

    With UTF-8 chosen (the default), a BOM alone is not enough: the head must also decode as UTF-16
    into lines of text (a line break, no control characters but tab, CR and LF), so that binary
    garbage that happens to start with ``FF FE`` is still refused as not UTF-8.
    """
    if not head.startswith(_UTF16_BOMS) or encoding not in (UTF8, "utf-16"):
        return encoding
    if encoding == "utf-16":
        return encoding
    text = codecs.getincrementaldecoder("utf-16")("replace").decode(head[:UTF16_SNIFF_BYTES], False)
    controls = any(ord(char) < 32 and char not in "\t\r\n" for char in text)
    return "utf-16" if "\n" in text and "\ufffd" not in text and not controls else encoding


def encoding_error(name: str, exc: UnicodeDecodeError, offset: int, line: int) -> SourceError:
    bad = exc.object[exc.start : exc.start + 1]
    what = f"byte 0x{bad[0]:02x}" if bad else "an incomplete character"
    return SourceError(
        f"The file is not valid {name} ({what} at offset {offset:,}, line {line:,}). {WRONG_ENCODING_ADVICE}"
    )


class TranscodingReader:
    """Reads a stream in ``encoding`` and hands out its text as UTF-8 bytes (empty only at the end)."""

    def __init__(self, source: Any, encoding: str) -> None:
        self._source = source
        self._encoding = encoding
        self._name = ENCODINGS[encoding].split(" (")[0]
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._consumed = 0  # bytes given to the decoder before the current chunk
        self._lines = 0  # line breaks decoded so far
        self._done = False

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))
        while not self._done:
            chunk = self._source.read(max(size, 2))
            final = not chunk
            buffered = len(self._decoder.getstate()[0])
            try:
                text = self._decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                before = exc.object[: exc.start]
                line = self._lines + _breaks(before, self._encoding) + 1
                raise encoding_error(self._name, exc, self._consumed - buffered + exc.start, line) from None
            self._consumed += len(chunk)
            self._done = final
            if text:
                self._lines += text.count("\n")
                return text.encode("utf-8")
        return b""


def _breaks(data: bytes, encoding: str) -> int:
    """Line breaks in the bytes of a chunk before a bad one (decoded leniently with the same codec)."""
    return codecs.decode(data, encoding, "replace").count("\n")
