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
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

MAGIC = b"PAR1"

# Thrift compact protocol types
BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)

# FileMetaData, RowGroup, ColumnChunk and ColumnMetaData field ids (parquet.thrift)
FMD_SCHEMA, FMD_NUM_ROWS, FMD_ROW_GROUPS = 2, 3, 4
RG_COLUMNS, RG_TOTAL_BYTE_SIZE, RG_NUM_ROWS, RG_FILE_OFFSET, RG_TOTAL_COMPRESSED_SIZE = 1, 2, 3, 5, 6
CC_META_DATA = 3
CMD_TOTAL_UNCOMPRESSED, CMD_TOTAL_COMPRESSED, CMD_DATA_PAGE_OFFSET, CMD_DICTIONARY_PAGE_OFFSET = 6, 7, 9, 11
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


def join_parts(footers: Sequence[tuple[Struct, int]], whole: Struct) -> tuple[list[tuple[int, int]], bytes]:
    """How to make one file of several parts (Parquet files of one row group each, the same rows,
    disjoint columns; ``footers``: each part's :func:`footer_of`): the byte range of each part
    to write, in order, and the footer (with its length and the closing magic) to write after
    them. ``whole``: the ``FileMetaData`` of an empty file with the whole schema, written with
    the same options (its schema, column orders and writer name are the joined file's); the
    column chunks are put in its leaves' order."""
    if not footers:
        raise ParquetPartsError("no parts")
    ranges: list[tuple[int, int]] = []
    chunks: dict[tuple[bytes, ...], Struct] = {}
    pos = 0
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
        start = 0 if k == 0 else len(MAGIC)
        shift = pos - start
        ranges.append((start, body_end))
        pos += body_end - start
        group = groups[0]
        total_bytes += _get(group, RG_TOTAL_BYTE_SIZE, 0)
        total_compressed += _get(group, RG_TOTAL_COMPRESSED_SIZE, 0)
        for chunk in _get(group, RG_COLUMNS, (STRUCT, []))[1]:
            path = _path(chunk)
            if path in chunks:
                raise ParquetPartsError(f"column {b'.'.join(path).decode()} is in two parts")
            chunks[path] = _moved(chunk, shift)
    leaves = [tuple(x) for x in _leaf_paths(_get(whole, FMD_SCHEMA, (STRUCT, []))[1])]
    if sorted(leaves) != sorted(chunks):
        raise ParquetPartsError("the parts' columns are not the schema's leaves")
    ordered = [chunks[p] for p in leaves]
    group = [
        (RG_COLUMNS, LIST, (STRUCT, ordered)),
        (RG_TOTAL_BYTE_SIZE, I64, total_bytes),
        (RG_NUM_ROWS, I64, n_rows),
        (RG_FILE_OFFSET, I64, _chunk_start(ordered[0])),
        (RG_TOTAL_COMPRESSED_SIZE, I64, total_compressed),
        (7, I16, 0),  # ordinal
    ]
    meta = _set(_set(whole, FMD_NUM_ROWS, I64, n_rows), FMD_ROW_GROUPS, LIST, (STRUCT, [group]))
    footer = encode_struct(meta)
    return ranges, footer + len(footer).to_bytes(4, "little") + MAGIC


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


def write_in_parts(
    table: Any, path: str | os.PathLike, write: Callable[[Any, Any], None], n_parts: int,
    whole: Callable[[], Struct],
) -> None:
    """Write ``table`` (Arrow) to ``path`` as one Parquet file, its columns written by
    ``n_parts`` writers at once (``write(sub_table, file_path)``, each on a thread of its own).

    The first part is written to ``path`` itself and the others to files beside it; then the
    first is cut at its footer, the others' column chunks are appended to it (a copy inside
    the kernel), and the joined footer after them (see :func:`join_parts`). ``whole()``: the
    ``FileMetaData`` of an empty file with the table's schema. With one part, or when the
    parts cannot be joined, the file is written whole. The part files are removed either way."""
    groups = balanced_groups({c: table.column(c).nbytes for c in table.column_names}, n_parts) if table.num_rows else [table.column_names]
    if len(groups) == 1:
        write(table, path)
        return
    paths = [str(path)] + [f"{path}.part{k}" for k in range(1, len(groups))]
    try:
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="wb-parquet") as pool:
            for f in [pool.submit(write, table.select(g), p) for g, p in zip(groups, paths)]:
                f.result()
        try:
            ranges, footer = join_parts([file_footer(p) for p in paths], whole())
        except ParquetPartsError:
            write(table, path)
            return
        with open(path, "r+b") as out:
            out.truncate(ranges[0][1])
            out.seek(ranges[0][1])
            for p, (start, end) in zip(paths[1:], ranges[1:]):
                with open(p, "rb") as src:
                    _copy_range(src, out, start, end - start)
            out.write(footer)
    finally:
        for p in paths[1:]:
            if os.path.exists(p):
                os.unlink(p)


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
