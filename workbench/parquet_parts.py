"""One Parquet file written by several writers at once.

Arrow's Parquet writer encodes and compresses one column after another on one thread; a
version's file is most of a snapshot's time. Here each writer takes some of the columns (one
row group, the same rows) into a buffer of its own, on its own thread, and the parts are joined
into one file: the first part's bytes up to its footer, then each other part's column chunks,
then one footer that lists every column chunk in the schema's order, its byte offsets moved to
where the chunk now lies. Readers see an ordinary one-row-group file; the bytes of every page
are the writer's own.

The footer is Thrift's compact protocol (the Parquet format's ``FileMetaData``). It is decoded
here generically, as a tree of (field id, type, value), and only the fields named in
:data:`_CHUNK_OFFSETS` and :data:`_META_OFFSETS` (absolute byte offsets) and the row group's
sizes are changed; every other field is written back as it was read.

A column whose values are a dictionary array can have its dictionary page made here instead of
by Arrow's writer (:func:`plain_dictionary_page`): the writer is given the column with a
stand-in dictionary of as many short values (its indices, so its data pages, are the same), and
the join puts the page made here where the stand-in's page was. Two columns over one dictionary
(a comparison's two responses) then share one page's work, and the values are never copied
into the writer's hash table (for 1M comparisons over 300k responses, some 400 MB of fresh
memory and 0.3 s of compression per column).
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

MAGIC = b"PAR1"

# Thrift compact protocol types
BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)

# FileMetaData, RowGroup, ColumnChunk and ColumnMetaData field ids (parquet.thrift)
FMD_SCHEMA, FMD_NUM_ROWS, FMD_ROW_GROUPS = 2, 3, 4
RG_COLUMNS, RG_TOTAL_BYTE_SIZE, RG_NUM_ROWS, RG_FILE_OFFSET, RG_TOTAL_COMPRESSED_SIZE = 1, 2, 3, 5, 6
CC_META_DATA = 3
CMD_TOTAL_UNCOMPRESSED, CMD_TOTAL_COMPRESSED, CMD_DATA_PAGE_OFFSET, CMD_DICTIONARY_PAGE_OFFSET = 6, 7, 9, 11
CMD_CODEC, CMD_STATISTICS, CMD_SIZE_STATISTICS, SIZE_UNENCODED_BYTES = 4, 12, 16, 1
# PageHeader and DictionaryPageHeader field ids, the dictionary page's type, codecs
PH_TYPE, PH_UNCOMPRESSED, PH_COMPRESSED, PH_CRC, PH_DICTIONARY = 1, 2, 3, 4, 7
DPH_NUM_VALUES, DPH_ENCODING = 1, 2
DICTIONARY_PAGE, PLAIN, PLAIN_DICTIONARY = 2, 0, 2
# pyarrow.parquet's compression names -> (Parquet's CompressionCodec, the pyarrow.Codec that makes it)
CODECS = {"none": (0, None), "snappy": (1, "snappy"), "gzip": (2, "gzip"), "brotli": (4, "brotli"), "zstd": (6, "zstd"), "lz4": (7, "lz4_raw")}
_CHUNK_OFFSETS = (2,)  # ColumnChunk.file_offset
_PAGE_INDEX = (4, 6)  # ColumnChunk: offset_index_offset, column_index_offset (the indexes hold page offsets)
_META_OFFSETS = (9, 10, 11, 14)  # ColumnMetaData: data_page, index_page, dictionary_page, bloom_filter offsets


class ParquetPartsError(ValueError):
    """A part is not a Parquet file this module can join (the caller writes the file whole)."""


# --------------------------------------------------------------------------------------------
# Thrift compact protocol: decode and encode, generically
# --------------------------------------------------------------------------------------------

Struct = list  # [(field id, type, value), ...]; a list value is (element type, [values])


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ParquetPartsError("footer ends inside a value")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out
            shift += 7
            if shift > 63:
                raise ParquetPartsError("varint longer than 64 bits")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParquetPartsError("footer ends inside a value")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def value(self, t: int) -> Any:
        if t in (BOOL_TRUE, BOOL_FALSE):  # an element of a list: one byte
            return self.byte() == BOOL_TRUE
        if t == BYTE:
            b = self.byte()
            return b - 256 if b > 127 else b
        if t in (I16, I32, I64):
            return self.zigzag()
        if t == DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if t == BINARY:
            return self.take(self.varint())
        if t in (LIST, SET):
            head = self.byte()
            size, et = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return (et, [self.value(et) for _ in range(size)])
        if t == MAP:
            size = self.varint()
            if not size:
                return (0, 0, [])
            kv = self.byte()
            kt, vt = kv >> 4, kv & 0x0F
            return (kt, vt, [(self.value(kt), self.value(vt)) for _ in range(size)])
        if t == STRUCT:
            return self.struct()
        raise ParquetPartsError(f"unknown Thrift compact type {t}")

    def struct(self) -> Struct:
        fields: Struct = []
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            t, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            if t in (BOOL_TRUE, BOOL_FALSE):  # a bool field: the value is in the type (kept as BOOL_TRUE, value)
                fields.append((fid, BOOL_TRUE, t == BOOL_TRUE))
            else:
                fields.append((fid, t, self.value(t)))


def _varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int, out: bytearray) -> None:
    _varint((n << 1) ^ (n >> 63), out)


def _write_value(t: int, v: Any, out: bytearray) -> None:
    if t in (BOOL_TRUE, BOOL_FALSE):
        out.append(BOOL_TRUE if v else BOOL_FALSE)
    elif t == BYTE:
        out.append(v & 0xFF)
    elif t in (I16, I32, I64):
        _zigzag(v, out)
    elif t == DOUBLE:
        out += struct.pack("<d", v)
    elif t == BINARY:
        _varint(len(v), out)
        out += v
    elif t in (LIST, SET):
        et, items = v
        if len(items) < 15:
            out.append((len(items) << 4) | et)
        else:
            out.append(0xF0 | et)
            _varint(len(items), out)
        for item in items:
            _write_value(et, item, out)
    elif t == MAP:
        kt, vt, pairs = v
        _varint(len(pairs), out)
        if pairs:
            out.append((kt << 4) | vt)
            for k, x in pairs:
                _write_value(kt, k, out)
                _write_value(vt, x, out)
    elif t == STRUCT:
        _write_struct(v, out)
    else:
        raise ParquetPartsError(f"unknown Thrift compact type {t}")


def _write_struct(fields: Struct, out: bytearray) -> None:
    last = 0
    for fid, t, v in fields:
        nibble = (BOOL_TRUE if v else BOOL_FALSE) if t in (BOOL_TRUE, BOOL_FALSE) else t
        if 0 < fid - last <= 15:
            out.append(((fid - last) << 4) | nibble)
        else:
            out.append(nibble)
            _zigzag(fid, out)
        last = fid
        if t not in (BOOL_TRUE, BOOL_FALSE):
            _write_value(t, v, out)
    out.append(0)


def decode_struct(data: bytes) -> Struct:
    r = _Reader(bytes(data))
    out = r.struct()
    if r.pos != len(r.data):
        raise ParquetPartsError(f"{len(r.data) - r.pos} bytes after the footer's end")
    return out


def encode_struct(fields: Struct) -> bytes:
    out = bytearray()
    _write_struct(fields, out)
    return bytes(out)


def _get(fields: Struct, fid: int, default: Any = None) -> Any:
    for f, _, v in fields:
        if f == fid:
            return v
    return default


def _set(fields: Struct, fid: int, t: int, value: Any) -> Struct:
    """``fields`` with field ``fid`` set (added in id order when absent)."""
    out = [(f, tt, value if f == fid else v) for f, tt, v in fields]
    if all(f != fid for f, _, _ in fields):
        out.append((fid, t, value))
        out.sort(key=lambda x: x[0])
    return out


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------

def _footer_start(size: int, head: bytes, tail: bytes) -> int:
    """Where the footer of a Parquet file of ``size`` bytes starts, from its first 4 and last 8
    bytes (raises :class:`ParquetPartsError` unless they are a Parquet file's)."""
    if size < 12:
        raise ParquetPartsError("not a Parquet file (shorter than its magic and footer length)")
    if head != MAGIC or tail[4:] != MAGIC:
        raise ParquetPartsError("not a Parquet file (no PAR1 magic at both ends)")
    n = int.from_bytes(tail[:4], "little")
    if n <= 0 or size - 8 - n < 4:
        raise ParquetPartsError("the footer's length does not fit the file")
    return size - 8 - n


def footer_of(buf: Any) -> tuple[Struct, int]:
    """A Parquet file's decoded ``FileMetaData`` and where its footer starts (the body's end)."""
    view = memoryview(buf)
    start = _footer_start(len(view), bytes(view[:4]), bytes(view[-8:]))
    return decode_struct(view[start:len(view) - 8]), start


def file_footer(path: str | os.PathLike) -> tuple[Struct, int]:
    """:func:`footer_of` for a file on disk (reads only its head, tail and footer)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(4)
        f.seek(max(size - 8, 0))
        start = _footer_start(size, head, f.read(8))
        f.seek(start)
        return decode_struct(f.read(size - 8 - start)), start


def _moved(chunk: Struct, shift: int) -> Struct:
    out = []
    for fid, t, v in chunk:
        if fid in _PAGE_INDEX:
            raise ParquetPartsError("a part has a page index, whose page offsets cannot be moved")
        if fid in _CHUNK_OFFSETS and t == I64 and v > 0:  # 0: not set (Arrow leaves file_offset so)
            v = v + shift
        elif fid == CC_META_DATA and t == STRUCT:
            v = [(f, tt, x + shift if f in _META_OFFSETS and tt == I64 and x > 0 else x) for f, tt, x in v]
        out.append((fid, t, v))
    return out


def _chunk_start(chunk: Struct) -> int:
    meta = _get(chunk, CC_META_DATA)
    dictionary = _get(meta, CMD_DICTIONARY_PAGE_OFFSET)
    data = _get(meta, CMD_DATA_PAGE_OFFSET)
    return min(x for x in (dictionary, data) if x is not None)


def _path(chunk: Struct) -> tuple[bytes, ...]:
    return tuple(_get(_get(chunk, CC_META_DATA), 3)[1])  # ColumnMetaData.path_in_schema


# --------------------------------------------------------------------------------------------
# Dictionary pages made here
# --------------------------------------------------------------------------------------------

FRAME_BYTES = 4 << 20  # plain bytes per zstd frame of a dictionary page made here
SPLICE_LIMIT = 1 << 30  # a larger dictionary is left to the writer (as write_version_file's dictionary_pagesize_limit)
PAGE_HEADER_MAX = 256  # bytes read to decode a stand-in dictionary page's header (some 20)


@dataclass
class DictionaryPage:
    """A dictionary page's body made outside Arrow's writer: the PLAIN encoding of
    ``num_values`` values (each value's byte length as 4 bytes little-endian, then its bytes),
    ``uncompressed_size`` bytes, compressed with ``codec`` (Parquet's ``CompressionCodec``)
    into ``body``, buffers to be written back to back."""

    num_values: int
    uncompressed_size: int
    codec: int
    body: list

    @property
    def compressed_size(self) -> int:
        return sum(memoryview(b).nbytes for b in self.body)


def _byte_array_type(t: Any) -> bool:
    """Whether Arrow values of type ``t`` are Parquet byte arrays a page made here can hold."""
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _binary_values(values: Any) -> tuple[Any, Any]:
    """``values`` as a large binary array (no copy of the bytes) and its offsets (numpy)."""
    import numpy as np
    import pyarrow as pa

    if not _byte_array_type(values.type):
        raise TypeError(f"a dictionary page made here holds text or binary values, not {values.type}")
    values = values.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset:values.offset + len(values) + 1]
    return values, offsets


def plain_size(values: Any) -> int:
    """Bytes of the PLAIN encoding of ``values`` (text or binary, no nulls)."""
    _, offsets = _binary_values(values)
    return int(offsets[-1] - offsets[0]) + 4 * len(values) if len(values) else 0


def plain_dictionary_page(values: Any, compression: str = "zstd", level: int | None = None,
                          frame_bytes: int = FRAME_BYTES) -> DictionaryPage:
    """The dictionary page of ``values`` (an Arrow text or binary array without nulls),
    compressed as Arrow's writer would with ``compression`` (pyarrow's name) and ``level``.

    With zstd the values are compressed in frames of about ``frame_bytes`` plain bytes, one
    after another: a zstd stream may hold several frames (RFC 8478), and readers decompress
    them back to back; a frame's size is well above zstd's window at the low levels (512 KiB
    at level 1), so little is lost, and no buffer of the whole plain encoding is needed (for
    300k responses, 120 MB of fresh memory). Other codecs compress the page as one block."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if compression not in CODECS:
        raise ValueError(f"unknown compression {compression!r}; one of {sorted(CODECS)}")
    if values.null_count:
        raise ValueError("a dictionary page holds no nulls")
    values, offsets = _binary_values(values)
    n = len(values)
    codec, arrow_codec = CODECS[compression]
    cumulative = offsets[1:] - offsets[0] + 4 * np.arange(1, n + 1, dtype=np.int64)  # plain bytes up to each value
    total = int(cumulative[-1]) if n else 0
    if total >= 2**31:
        raise ValueError(f"a dictionary page of {total} bytes is over Parquet's 2 GiB page size")
    frames = compression == "zstd"
    step = frame_bytes if frames else max(total, 1)
    ends = sorted({int(e) for e in np.searchsorted(cumulative, np.arange(step, total, step), side="left") + 1} | {n})
    compressor = pa.Codec(arrow_codec, level) if arrow_codec is not None else None
    empty = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.zeros(2, np.int64)), pa.py_buffer(b"")])[0]  # pa.scalar would import pandas
    plain, body, lo = [], [], 0
    for hi in ends if n else []:
        lengths = np.diff(offsets[lo:hi + 1]).astype("<i4")
        prefix = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), hi - lo, [None, pa.py_buffer(lengths)]).cast(pa.large_binary())
        joined = pc.binary_join_element_wise(prefix, values.slice(lo, hi - lo), empty)
        jo = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset:joined.offset + len(joined) + 1]
        piece = joined.buffers()[2].slice(int(jo[0]), int(jo[-1] - jo[0]))
        if compressor is not None and frames:  # the frame's plain bytes are let go at once (a page's worth of memory)
            body.append(compressor.compress(piece, asbytes=True))  # as bytes: Arrow's buffer has the bound's size (4 MiB), not the frame's
        else:
            plain.append(piece)
        del joined, piece
        lo = hi
    if compressor is None:
        body = plain
    elif not frames or not n:  # one block (an empty page too: a compressed empty block)
        body = [compressor.compress(plain[0] if len(plain) == 1 else b"".join(memoryview(b) for b in plain))]
    return DictionaryPage(n, total, codec, body)


@dataclass
class Splice:
    """A column chunk's dictionary page to put where its stand-in's page is: ``page`` (a
    :class:`DictionaryPage`, or a future of one) and the column's size statistic
    (``unencoded_byte_array_data_bytes``: the byte lengths of its values summed over its rows)."""

    page: Any
    unencoded_bytes: int | None = None


def _page_of(splice: Splice, name: str) -> DictionaryPage:
    if not hasattr(splice.page, "result"):
        return splice.page
    try:
        return splice.page.result()
    except Exception as exc:  # noqa: BLE001  (the file is then written whole)
        raise ParquetPartsError(f"column {name}: its dictionary page could not be made ({exc})") from exc


def _spliced(chunk: Struct, splice: Splice, head: bytes, start: int) -> tuple[Struct, list, int, int, int]:
    """The chunk with its dictionary page replaced by ``splice.page``, starting at ``start``
    (``head``: the part's bytes from the chunk's start, at least its page header). Returns the
    chunk, the new page (its header and body, to write), where the stand-in's data pages start
    in the part, and the changes of the chunk's uncompressed and compressed sizes."""
    meta = _get(chunk, CC_META_DATA)
    name = b".".join(_path(chunk)).decode()
    page = _page_of(splice, name)
    if _get(meta, CMD_STATISTICS) is not None:
        raise ParquetPartsError(f"column {name} has statistics, which its stand-in's values made")
    dictionary, data = _get(meta, CMD_DICTIONARY_PAGE_OFFSET), _get(meta, CMD_DATA_PAGE_OFFSET)
    if dictionary is None or data is None or not dictionary < data:
        raise ParquetPartsError(f"column {name} has no dictionary page before its data pages")
    if _get(meta, CMD_CODEC) != page.codec:
        raise ParquetPartsError(f"column {name} is compressed with codec {_get(meta, CMD_CODEC)}, its page with {page.codec}")
    r = _Reader(bytes(head))
    header = r.struct()
    size = r.pos
    dph = _get(header, PH_DICTIONARY)
    if _get(header, PH_TYPE) != DICTIONARY_PAGE or dph is None or _get(dph, DPH_ENCODING) not in (PLAIN, PLAIN_DICTIONARY):
        raise ParquetPartsError(f"column {name}: the chunk does not start with a plain dictionary page")
    if _get(dph, DPH_NUM_VALUES) != page.num_values:
        raise ParquetPartsError(f"column {name}: the stand-in's dictionary has {_get(dph, DPH_NUM_VALUES)} values, the page {page.num_values}")
    if size + _get(header, PH_COMPRESSED) != data - dictionary:
        raise ParquetPartsError(f"column {name}: the dictionary page does not end where the data pages start")
    if page.uncompressed_size >= 2**31 or page.compressed_size >= 2**31:
        raise ParquetPartsError(f"column {name}: a page over 2 GiB")
    new = _set(_set(header, PH_UNCOMPRESSED, I32, page.uncompressed_size), PH_COMPRESSED, I32, page.compressed_size)
    if _get(header, PH_CRC) is not None:
        crc = 0
        for b in page.body:
            crc = zlib.crc32(memoryview(b), crc)
        new = _set(new, PH_CRC, I32, crc - 2**32 if crc >= 2**31 else crc)
    new_header = encode_struct(new)
    du = (len(new_header) + page.uncompressed_size) - (size + _get(header, PH_UNCOMPRESSED))
    dc = (len(new_header) + page.compressed_size) - (data - dictionary)
    moved = _moved(chunk, start - dictionary)  # the dictionary page's offset, and the chunk's own, to start
    fields = []
    for fid, t, v in _get(moved, CC_META_DATA):
        if fid == CMD_TOTAL_UNCOMPRESSED:
            v += du
        elif fid == CMD_TOTAL_COMPRESSED:
            v += dc
        elif fid == CMD_DATA_PAGE_OFFSET:
            v = start + len(new_header) + page.compressed_size
        elif fid in _META_OFFSETS and fid != CMD_DICTIONARY_PAGE_OFFSET and t == I64 and v > 0:
            raise ParquetPartsError(f"column {name} has an index page or a bloom filter")
        elif fid == CMD_SIZE_STATISTICS and _get(v, SIZE_UNENCODED_BYTES) is not None:
            if splice.unencoded_bytes is None:
                raise ParquetPartsError(f"column {name}: its size statistics need the values' byte count")
            v = _set(v, SIZE_UNENCODED_BYTES, I64, splice.unencoded_bytes)
        fields.append((fid, t, v))
    return _set(moved, CC_META_DATA, STRUCT, fields), [new_header, *page.body], data, du, dc


Piece = Union[tuple, Any]  # (part, start, end): those bytes of a part; else a buffer written as it is


def join_parts(footers: Sequence[tuple[Struct, int]], whole: Struct, splices: dict[str, Splice] | None = None,
               read: Callable[[int, int, int], bytes] | None = None) -> tuple[list[Piece], bytes]:
    """How to make one file of several parts (Parquet files of one row group each, the same rows,
    disjoint columns; ``footers``: each part's :func:`footer_of`): the pieces to write, in
    order (the magic, the parts' column chunks, the pages of ``splices``), and the footer (with
    its length and the closing magic) to write after them. ``whole``: the ``FileMetaData`` of an
    empty file with the whole schema, written with the same options (its schema, column orders
    and writer name are the joined file's); the column chunks are put in its leaves' order.

    ``splices``: top-level column name -> :class:`Splice`; that column's chunk gets the splice's
    dictionary page in place of its own (``read(part, offset, n)``: ``n`` bytes of a part from
    ``offset``, to decode the page header it replaces). A part's column chunks must lie back to
    back between its magic and its footer (as Arrow writes them)."""
    if not footers:
        raise ParquetPartsError("no parts")
    splices = splices or {}
    if splices and read is None:
        raise ParquetPartsError("splices need a reader of the parts")
    pieces: list[Piece] = [MAGIC]
    chunks: dict[tuple[bytes, ...], Struct] = {}
    pos = len(MAGIC)
    n_rows = None
    total_bytes = total_compressed = 0
    for k, (meta, body_end) in enumerate(footers):
        groups = _get(meta, FMD_ROW_GROUPS, (STRUCT, []))[1]
        rows = _get(meta, FMD_NUM_ROWS)
        if len(groups) != 1:
            raise ParquetPartsError(f"part {k} has {len(groups)} row groups, not 1")
        if n_rows is not None and rows != n_rows:
            raise ParquetPartsError(f"part {k} has {rows} rows, part 0 {n_rows}")
        n_rows = rows
        group = groups[0]
        total_bytes += _get(group, RG_TOTAL_BYTE_SIZE, 0)
        total_compressed += _get(group, RG_TOTAL_COMPRESSED_SIZE, 0)
        cursor = len(MAGIC)
        for chunk in sorted(_get(group, RG_COLUMNS, (STRUCT, []))[1], key=_chunk_start):
            path = _path(chunk)
            if path in chunks:
                raise ParquetPartsError(f"column {b'.'.join(path).decode()} is in two parts")
            start = _chunk_start(chunk)
            end = start + _get(_get(chunk, CC_META_DATA), CMD_TOTAL_COMPRESSED)
            if start != cursor or end > body_end:
                raise ParquetPartsError(f"part {k}: its column chunks do not lie back to back")
            splice = splices.get(b".".join(path).decode()) if len(path) == 1 else None
            if splice is not None:
                head = read(k, start, min(PAGE_HEADER_MAX, end - start))
                chunks[path], page, data, du, dc = _spliced(chunk, splice, head, pos)
                pieces += [*page, (k, data, end)]
                total_bytes += du
                total_compressed += dc
                pos += end - start + dc
            else:
                chunks[path] = _moved(chunk, pos - start)
                if isinstance(pieces[-1], tuple) and pieces[-1][0] == k and pieces[-1][2] == start:
                    pieces[-1] = (k, pieces[-1][1], end)
                else:
                    pieces.append((k, start, end))
                pos += end - start
            cursor = end
        if cursor != body_end:
            raise ParquetPartsError(f"part {k}: {body_end - cursor} bytes between its column chunks and its footer")
    leaves = [tuple(x) for x in _leaf_paths(_get(whole, FMD_SCHEMA, (STRUCT, []))[1])]
    if sorted(leaves) != sorted(chunks):
        raise ParquetPartsError("the parts' columns are not the schema's leaves")
    unknown = set(splices) - {b".".join(p).decode() for p in chunks}
    if unknown:
        raise ParquetPartsError(f"no column chunk for the splices of {sorted(unknown)}")
    ordered = [chunks[p] for p in leaves]
    group = _get(footers[0][0], FMD_ROW_GROUPS)[1][0]  # the first part's row group, its other fields as they are
    for fid, t, v in ((RG_COLUMNS, LIST, (STRUCT, ordered)), (RG_TOTAL_BYTE_SIZE, I64, total_bytes),
                      (RG_FILE_OFFSET, I64, _chunk_start(ordered[0])), (RG_TOTAL_COMPRESSED_SIZE, I64, total_compressed)):
        group = _set(group, fid, t, v)
    meta = _set(_set(whole, FMD_NUM_ROWS, I64, n_rows), FMD_ROW_GROUPS, LIST, (STRUCT, [group]))
    footer = encode_struct(meta)
    return pieces, footer + len(footer).to_bytes(4, "little") + MAGIC


def _leaf_paths(elements: list[Struct]) -> list[list[bytes]]:
    """The column paths of a flattened Parquet schema (``SchemaElement`` list, root first)."""
    out: list[list[bytes]] = []

    def walk(i: int, prefix: list[bytes]) -> int:
        name, children = _get(elements[i], 4), _get(elements[i], 5)
        path = prefix + [name] if i else prefix
        i += 1
        if not children and path:
            out.append(path)
            return i
        for _ in range(children or 0):
            i = walk(i, path)
        return i

    if walk(0, []) != len(elements):
        raise ParquetPartsError("the schema's elements do not form one tree")
    return out


def balanced_groups(weights: dict[str, int], n: int) -> list[list[str]]:
    """``weights``' keys in at most ``n`` groups of about equal weight (heaviest first, each to
    the lightest group), each group in the keys' given order."""
    order = {k: i for i, k in enumerate(weights)}
    groups: list[list[str]] = [[] for _ in range(max(1, min(n, len(weights))))]
    load = [0] * len(groups)
    for k in sorted(weights, key=lambda k: -weights[k]):
        i = load.index(min(load))
        groups[i].append(k)
        load[i] += weights[k]
    return [sorted(g, key=order.__getitem__) for g in groups if g]


def _stand_in(n: int, value_type: Any) -> Any:
    """``n`` distinct short values of ``value_type`` ("0", "1", ...): a stand-in dictionary."""
    import numpy as np
    import pyarrow as pa

    ints = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])  # pa.array(numpy) would import pandas
    return ints.cast(pa.string()).cast(value_type)


def row_lengths(column: Any) -> Any:
    """The byte length of each row's value in a dictionary array over text or binary values
    (numpy; rows without a value are left out). (Read from the Arrow buffers: pyarrow's
    ``to_numpy`` would import pandas.)"""
    import numpy as np
    import pyarrow as pa

    _, offsets = _binary_values(column.dictionary)
    lengths = np.diff(offsets)
    indices = column.indices
    kind = "u" if pa.types.is_unsigned_integer(indices.type) else "i"
    n, at = len(indices), indices.offset
    positions = np.frombuffer(indices.buffers()[1], dtype=np.dtype(f"<{kind}{indices.type.bit_width // 8}"))[at:at + n]
    if indices.null_count:
        valid = np.unpackbits(np.frombuffer(indices.buffers()[0], dtype=np.uint8), bitorder="little")[at:at + n].astype(bool)
        positions = positions[valid]
    return lengths[positions]


def _unencoded_bytes(column: Any) -> int:
    """The byte lengths of a dictionary column's values summed over its rows (nulls count 0):
    the column's ``unencoded_byte_array_data_bytes``."""
    return int(row_lengths(column).sum())


def spliceable(column: Any) -> bool:
    """Whether a table column can get a dictionary page made here: one chunk of a dictionary
    array over text or binary values without nulls, whose page stays under :data:`SPLICE_LIMIT`."""
    import pyarrow as pa

    if not pa.types.is_dictionary(column.type) or column.num_chunks != 1 or len(column) == 0:
        return False
    dictionary = column.chunk(0).dictionary
    if len(dictionary) == 0 or not _byte_array_type(dictionary.type):
        return False
    return dictionary.null_count == 0 and plain_size(dictionary) < SPLICE_LIMIT


def _dictionary_key(array: Any) -> tuple:
    """The identity of an Arrow array's memory: two columns over one dictionary share a page."""
    return (len(array), array.offset, *(b.address if b is not None else 0 for b in array.buffers()))


def page_key(values: Any, compression: str, level: int | None) -> tuple:
    """What identifies a dictionary page: the memory of its values, and how it is compressed."""
    return (_dictionary_key(values), compression, level)


def write_in_parts(
    table: Any, path: str | os.PathLike, write: Callable[[Any, Any], None], n_parts: int,
    whole: Callable[[], Struct], splice: dict[str, tuple[str, int | None]] | None = None,
    pages: dict[tuple, Any] | None = None,
) -> None:
    """Write ``table`` (Arrow) to ``path`` as one Parquet file, its columns written by
    ``n_parts`` writers at once (``write(sub_table, file_path)``, each on a thread of its own).

    ``splice``: column name -> (compression, level) as ``write`` compresses that column; each
    such column that is :func:`spliceable` gets its dictionary page made here (one page for the
    columns over one dictionary, made on a thread beside the writers) and is given to its
    writer with a stand-in dictionary (see the module's text). ``pages``: pages begun before
    the call, ``page_key(dictionary, compression, level) ->`` a :class:`DictionaryPage` or a
    future of one; a splice column over that very dictionary (the same memory) takes it
    instead of making its own.

    The parts are written to files beside ``path``; then their column chunks (and the pages
    made here) are copied into ``path`` (a copy inside the kernel), and the joined footer after
    them (see :func:`join_parts`). ``whole()``: the ``FileMetaData`` of an empty file with the
    table's schema. With one part and nothing to splice, or when the parts cannot be joined,
    the file is written whole. The part files are removed either way."""
    spliced = {c: o for c, o in (splice or {}).items() if c in table.column_names and spliceable(table.column(c))} if table.num_rows else {}
    weights = {c: (table.column(c).chunk(0).indices.nbytes if c in spliced else table.column(c).nbytes) for c in table.column_names}
    groups = balanced_groups(weights, n_parts) if table.num_rows else [table.column_names]
    if len(groups) == 1 and not spliced:
        write(table, path)
        return
    import pyarrow as pa

    paths = [f"{path}.part{k}" for k in range(len(groups))]
    try:
        with ThreadPoolExecutor(max_workers=len(groups) + 1, thread_name_prefix="wb-parquet") as pool:
            made: dict[tuple, Any] = {}
            stand_ins: dict[tuple, Any] = {}
            splices: dict[str, Splice] = {}
            columns = {}
            for c, (compression, level) in spliced.items():
                array = table.column(c).chunk(0)
                key = page_key(array.dictionary, compression, level)
                if key not in made:
                    made[key] = (pages or {}).get(key) or pool.submit(plain_dictionary_page, array.dictionary, compression, level)
                    stand_ins[key] = _stand_in(len(array.dictionary), array.dictionary.type)
                splices[c] = Splice(made[key], _unencoded_bytes(array))
                columns[c] = pa.DictionaryArray.from_arrays(array.indices, stand_ins[key])
            parts = [
                pa.table([columns.get(c, table.column(c)) for c in g], names=g) for g in groups
            ]
            for f in [pool.submit(write, t, p) for t, p in zip(parts, paths)]:
                f.result()
            del parts, columns, stand_ins
            try:
                pieces, footer = join_parts([file_footer(p) for p in paths], whole(), splices, lambda k, at, n: _pread(paths[k], n, at))
            except ParquetPartsError:
                pieces = None
            if pieces is not None:
                write_joined(path, pieces, footer, paths)
        if pieces is None:
            write(table, path)
    finally:
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)


def _pread(path: str, n: int, offset: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), n, offset)


def write_joined(path: str | os.PathLike, pieces: Sequence[Piece], footer: bytes, parts: Sequence[str | os.PathLike]) -> None:
    """Write the file that :func:`join_parts` laid out: its pieces (byte ranges of the files
    ``parts``, or buffers), then ``footer``."""
    files = [open(p, "rb") for p in parts]
    try:
        with open(path, "wb") as out:
            for piece in pieces:
                if isinstance(piece, tuple):
                    k, start, end = piece
                    _copy_range(files[k], out, start, end - start)
                else:
                    out.write(piece)
            out.write(footer)
    finally:
        for f in files:
            f.close()


def _copy_range(src: Any, dst: Any, offset: int, count: int) -> None:
    """``count`` bytes of ``src`` from ``offset`` appended at ``dst``'s position (in the kernel
    where it can: ``os.copy_file_range``)."""
    dst.flush()
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < count:
                n = os.copy_file_range(src.fileno(), dst.fileno(), count - done, offset + done)
                if n <= 0:
                    break
                done += n
        except OSError:
            pass
        dst.seek(0, os.SEEK_END)
    src.seek(offset + done)
    while done < count:
        chunk = src.read(min(1 << 22, count - done))
        if not chunk:
            raise ParquetPartsError("a part file ended early")
        dst.write(chunk)
        done += len(chunk)
