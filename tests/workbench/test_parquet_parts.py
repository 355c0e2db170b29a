"""A version's Parquet file written by several writers at once (``workbench.parquet_parts``).

- The footer codec (Thrift compact protocol) gives back the very bytes it read, for footers
  of many shapes that Arrow writes.
- A file joined from parts reads, with pyarrow and with polars (two independent readers), as
  the file one writer writes, for any split of the columns; its column chunks carry the same
  metadata, only moved; its row group's sizes are the sums.
- Bad parts (not Parquet, cut short, two row groups, other row counts, a column twice or
  missing, a page index) are refused with a clear error, and ``write_in_parts`` then writes the
  file whole; a writer's error propagates; no part file is left behind.
- A snapshot written in parts has the hash, rows and statistics of one written whole, and its
  file verifies. A snapshot does not import pandas (0.3-0.6 s of a snapshot's time).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import polars as pl
import pytest

import workbench
from workbench import parquet_parts as P
from workbench import versions


def _table(n: int = 3000, seed: int = 0) -> pa.Table:
    """A comparisons-like table: dictionary texts (shared by two columns), a list of structs of
    dictionaries, nulls, plain ids, numbers, flags, timestamps."""
    rng = random.Random(seed)
    texts = pa.array([f"response {i} " + "word " * rng.randrange(1, 40) for i in range(200)], pa.large_string())
    idx = lambda: pa.array([rng.randrange(200) for _ in range(n)], pa.int32())  # noqa: E731
    roles = pa.array(["user", "assistant"], pa.large_string())
    lengths = [rng.randrange(1, 4) for _ in range(n)]
    offsets = [0]
    for k in lengths:
        offsets.append(offsets[-1] + k)
    msgs = pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()),
        pa.StructArray.from_arrays([
            pa.DictionaryArray.from_arrays(pa.array([i % 2 for i in range(offsets[-1])], pa.int32()), roles),
            pa.DictionaryArray.from_arrays(pa.array([rng.randrange(200) for _ in range(offsets[-1])], pa.int32()), texts),
        ], names=["role", "content"]),
    )
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return pa.table({
        "comparison_id": pa.array([f"c{i:08d}" for i in range(n)], pa.large_string()),
        "prompt_messages": msgs,
        "response_a": pa.DictionaryArray.from_arrays(idx(), texts),
        "response_b": pa.DictionaryArray.from_arrays(idx(), texts),
        "model_a": pa.array([None if i % 7 == 0 else f"m{i % 3}" for i in range(n)], pa.large_string()),
        "label": pa.array([rng.choice(["a", "b", "tie", "both_bad"]) for _ in range(n)], pa.large_string()),
        "strength": pa.array([None if i % 3 else rng.random() for i in range(n)], pa.float64()),
        "gold": pa.array([i % 5 == 0 for i in range(n)], pa.bool_()),
        "rationale": pa.array([None] * n, pa.large_string()),
        "duration_ms": pa.array([rng.randrange(10**6) for _ in range(n)], pa.int64()),
        "created_at": pa.array([t0 + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
    })


def _whole(table: pa.Table):
    return P.footer_of(versions._empty_file(table.schema))[0]


def _parts(table: pa.Table, groups: list[list[str]], tmp_path) -> list[str]:
    paths = []
    for k, g in enumerate(groups):
        p = str(tmp_path / f"part{k}.parquet")
        versions.write_version_file(table.select(g), p)
        paths.append(p)
    return paths


def _join(table: pa.Table, groups: list[list[str]], tmp_path, out: str = "joined.parquet") -> str:
    paths = _parts(table, groups, tmp_path)
    pieces, footer = P.join_parts([P.file_footer(p) for p in paths], _whole(table))
    dest = str(tmp_path / out)
    P.write_joined(dest, pieces, footer, paths)
    return dest


def _chunk_meta(path: str) -> list[dict]:
    """Every column chunk's metadata, offsets left out."""
    out = []
    rg = pq.read_metadata(path).row_group(0)
    for i in range(rg.num_columns):
        d = rg.column(i).to_dict()
        for k in ("file_offset", "data_page_offset", "dictionary_page_offset", "index_page_offset"):
            d.pop(k, None)
        out.append(d)
    return out


@pytest.mark.parametrize("options", [
    {},
    {"compression": "zstd"},
    {"use_dictionary": False, "write_statistics": False},
    {"write_page_index": True},
    {"store_schema": True},
], ids=["defaults", "zstd", "plain", "page-index", "arrow-schema"])
def test_the_footer_codec_gives_back_the_bytes_it_read(tmp_path, options):
    table = _table(500)
    wide = table.append_column("many", pa.array([[1, 2]] * 500, pa.list_(pa.int64())))
    for k in range(20):  # more than 15 columns: lists in the long form, field deltas > 15 nowhere
        wide = wide.append_column(f"x{k}", pa.array(range(500), pa.int32()))
    path = str(tmp_path / "f.parquet")
    pq.write_table(wide, path, **options)
    raw = open(path, "rb").read()
    meta, start = P.footer_of(raw)
    assert P.encode_struct(meta) == raw[start:-8]
    assert P.file_footer(path) == (meta, start)


def test_thrift_values_of_every_kind_round_trip():
    fields = [
        (1, P.BOOL_TRUE, True), (2, P.BOOL_TRUE, False), (3, P.BYTE, -5), (4, P.I16, -300), (5, P.I32, 2**31 - 1),
        (6, P.I64, -(2**63)), (7, P.DOUBLE, 1.5), (8, P.BINARY, b"\x00\xffbytes"), (9, P.LIST, (P.I32, list(range(20)))),
        (10, P.SET, (P.BOOL_TRUE, [True, False])), (11, P.MAP, (P.BINARY, P.I64, [(b"k", 1), (b"l", -1)])),
        (40, P.STRUCT, [(1, P.LIST, (P.STRUCT, [[(2, P.I64, 7)], []]))]), (41, P.MAP, (0, 0, [])),
    ]
    data = P.encode_struct(fields)
    assert P.decode_struct(data) == fields
    assert P.encode_struct(P.decode_struct(data)) == data


@pytest.mark.parametrize("data, match", [
    (b"", "ends inside"),
    (b"\x15", "ends inside"),
    (b"\x18\x05ab", "ends inside"),  # a binary of 5 bytes with 2 there
    (b"\x1f\x00", "unknown Thrift compact type"),
    (b"\x16" + b"\xff" * 11, "varint longer"),
    (b"\x15\x02\x00\x00", "after the footer"),
])
def test_a_broken_footer_is_refused(data, match):
    with pytest.raises(P.ParquetPartsError, match=match):
        P.decode_struct(data)


@pytest.mark.parametrize("n_parts", [2, 3, 4, 11])
def test_a_joined_file_reads_as_the_whole_file(tmp_path, n_parts):
    table = _table()
    whole = str(tmp_path / "whole.parquet")
    versions.write_version_file(table, whole)
    names = table.column_names
    rng = random.Random(n_parts)
    for trial in range(3):
        shuffled = names[:]
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(names)), n_parts - 1))
        groups = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(names)])]
        joined = _join(table, groups, tmp_path, f"joined{trial}.parquet")
        assert pq.read_table(joined).equals(pq.read_table(whole))
        assert pl.read_parquet(joined).equals(pl.read_parquet(whole))  # a second, independent reader
        assert _chunk_meta(joined) == _chunk_meta(whole)
        a, b = pq.read_metadata(joined), pq.read_metadata(whole)
        assert (a.num_rows, a.num_row_groups, a.schema.equals(b.schema)) == (b.num_rows, 1, True)
        assert a.row_group(0).total_byte_size == b.row_group(0).total_byte_size
        assert abs(os.path.getsize(joined) - os.path.getsize(whole)) < 64  # the same pages; footers differ in offsets' widths


def test_write_in_parts_writes_one_file_and_removes_the_parts(tmp_path):
    table = _table()
    path = tmp_path / "v.parquet"
    P.write_in_parts(table, path, versions.write_version_file, 3, lambda: _whole(table))
    assert sorted(os.listdir(tmp_path)) == ["v.parquet"]
    assert pq.read_table(path).equals(table.cast(pq.read_table(path).schema))
    assert pq.read_metadata(path).num_row_groups == 1


def test_balanced_groups_share_the_weight_and_keep_the_order():
    weights = {"a": 1, "big1": 100, "b": 2, "big2": 90, "c": 3, "d": 5}
    groups = P.balanced_groups(weights, 2)
    assert groups == [["a", "big1"], ["b", "big2", "c", "d"]]  # heaviest first, each to the lighter group: 101 and 100
    assert all(g == sorted(g, key=list("a big1 b big2 c d".split()).index) for g in groups)
    assert P.balanced_groups({"a": 1}, 4) == [["a"]]
    assert P.balanced_groups({"a": 1, "b": 1}, 1) == [["a", "b"]]


def test_parts_that_do_not_fit_together_are_refused(tmp_path):
    table = _table(400)
    whole = _whole(table)
    cols = table.column_names
    half = [cols[:5], cols[5:]]
    good = [P.file_footer(p) for p in _parts(table, half, tmp_path)]
    P.join_parts(good, whole)  # fits
    with pytest.raises(P.ParquetPartsError, match="no parts"):
        P.join_parts([], whole)
    with pytest.raises(P.ParquetPartsError, match="in two parts"):
        P.join_parts(good + good[:1], whole)
    with pytest.raises(P.ParquetPartsError, match="not the schema's leaves"):
        P.join_parts(good[:1], whole)
    (tmp_path / "short").mkdir()
    other = _parts(table.slice(0, 100), half, tmp_path / "short")
    with pytest.raises(P.ParquetPartsError, match="rows"):
        P.join_parts([good[0], P.file_footer(other[1])], whole)
    two_groups = str(tmp_path / "two.parquet")
    pq.write_table(table.select(cols[5:]), two_groups, row_group_size=100)
    with pytest.raises(P.ParquetPartsError, match="row groups"):
        P.join_parts([good[0], P.file_footer(two_groups)], whole)
    indexed = str(tmp_path / "indexed.parquet")
    pq.write_table(table.select(cols[5:]), indexed, write_page_index=True)
    with pytest.raises(P.ParquetPartsError, match="page index"):
        P.join_parts([good[0], P.file_footer(indexed)], whole)


@pytest.mark.parametrize("content, match", [
    (b"", "shorter"),
    (b"PAR1", "shorter"),
    (b"not a parquet file at all", "magic"),
    (b"PAR1" + b"\x00" * 8 + b"\xff\xff\x00\x00PAR1", "does not fit"),
    (b"PAR1\x15\x02\x00\x00\x00\x00PAR1", "does not fit"),
])
def test_a_part_that_is_not_parquet_is_refused(tmp_path, content, match):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(P.ParquetPartsError, match=match):
        P.file_footer(path)


def test_parts_that_cannot_be_joined_are_written_whole(tmp_path):
    table = _table(400)

    def with_page_index(t, path):
        pq.write_table(t, path, write_page_index=True)

    path = tmp_path / "v.parquet"
    P.write_in_parts(table, path, with_page_index, 2, lambda: _whole(table))
    assert sorted(os.listdir(tmp_path)) == ["v.parquet"]
    assert pq.read_table(path).num_rows == 400 and pq.read_metadata(path).row_group(0).column(0).has_offset_index


def test_a_writer_error_propagates_and_leaves_no_part_files(tmp_path):
    table = _table(400)
    calls = []

    def failing(t, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        versions.write_version_file(t, path)

    path = tmp_path / "v.parquet"
    with pytest.raises(OSError, match="disk full"):
        P.write_in_parts(table, path, failing, 3, lambda: _whole(table))
    assert not [p for p in os.listdir(tmp_path) if ".part" in p]


def test_a_snapshot_written_in_parts_is_the_snapshot_written_whole(tmp_path, monkeypatch):
    from test_snapshot_paths import _with_history

    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    _with_history(store)
    monkeypatch.setattr(versions, "PARTS_FROM_ROWS", 10**9)
    one = store.snapshot("one")
    monkeypatch.setattr(versions, "PARTS_FROM_ROWS", 1)
    monkeypatch.setattr(versions, "WRITE_PARTS", 3)
    three = store.snapshot("three")
    assert pq.read_metadata(one.path).num_row_groups == pq.read_metadata(three.path).num_row_groups == 1
    assert three.hash == one.hash and three.stats == one.stats
    assert three.to_polars().equals(one.to_polars())
    assert pl.read_parquet(three.path).equals(pl.read_parquet(one.path))
    three.verify(deep=True)
    assert not [p for p in os.listdir(tmp_path / "files" / "versions") if not p.endswith(".parquet")]
    store.close()


def test_a_snapshot_does_not_import_pandas(tmp_path):
    code = (
        "import sys, workbench\n"
        f"s = workbench.open({str(tmp_path / 'wb.db')!r}, files_dir={str(tmp_path / 'files')!r})\n"
        "import polars as pl\n"
        "s.add_comparisons(pl.DataFrame({'prompt': ['p1', 'p2'], 'response_a': ['x', 'y'], 'response_b': ['y', 'z'], 'label': ['a', 'b']}))\n"
        "assert 'pandas' not in sys.modules, 'imported before the snapshot'\n"
        "v = s.snapshot('v1')\n"
        "assert v.n_comparisons == 2\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# Dictionary pages made here (spliced in place of a stand-in's)
# --------------------------------------------------------------------------------------------

def _plain_reference(values: list) -> bytes:
    """PLAIN encoding of byte-array values, written out value by value (Parquet's spec)."""
    out = bytearray()
    for v in values:
        b = v.encode() if isinstance(v, str) else v
        out += len(b).to_bytes(4, "little") + b
    return bytes(out)


DICTIONARY_VALUES = ["", "a", "é ü ✓ 日本", "word " * 300, "x" * 5000, *(f"value {i}" for i in range(200))]


@pytest.mark.parametrize("compression, arrow_codec", [
    ("zstd", "zstd"), ("lz4", "lz4_raw"), ("snappy", "snappy"), ("gzip", "gzip"), ("brotli", "brotli"), ("none", None),
])
@pytest.mark.parametrize("frame_bytes", [64, 1 << 20])
@pytest.mark.parametrize("value_type", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()])
def test_a_dictionary_page_made_here_is_the_plain_encoding_compressed(compression, arrow_codec, frame_bytes, value_type):
    values = DICTIONARY_VALUES if value_type in (pa.string(), pa.large_string()) else [v.encode() for v in DICTIONARY_VALUES]
    array = pa.array(values, value_type).slice(1)  # an offset into the buffers, too
    page = P.plain_dictionary_page(array, compression, None, frame_bytes=frame_bytes)
    expected = _plain_reference(values[1:])
    assert page.num_values == len(values) - 1 and page.uncompressed_size == len(expected)
    assert page.codec == P.CODECS[compression][0]
    body = b"".join(bytes(memoryview(b)) for b in page.body)
    assert page.compressed_size == len(body)
    if arrow_codec is None:
        assert body == expected
    else:
        assert pa.Codec(arrow_codec).decompress(body, decompressed_size=len(expected)).to_pybytes() == expected
    if compression == "zstd":
        # frames of at least frame_bytes plain bytes each (the last one less), one value at least
        assert len(page.body) == 1 if frame_bytes > len(expected) else 1 < len(page.body) <= len(expected) // frame_bytes + 1
    else:
        assert len(page.body) == 1


def test_a_dictionary_page_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="no nulls"):
        P.plain_dictionary_page(pa.array(["a", None]))
    with pytest.raises(TypeError, match="text or binary"):
        P.plain_dictionary_page(pa.array([1, 2]))
    with pytest.raises(ValueError, match="unknown compression"):
        P.plain_dictionary_page(pa.array(["a"]), "lzo")
    empty = P.plain_dictionary_page(pa.array([], pa.string()), "zstd")
    assert (empty.num_values, empty.uncompressed_size, len(empty.body)) == (0, 0, 1)


TEXT_SPLICE = {"response_a": ("zstd", 1), "response_b": ("zstd", 1)}  # as write_version_file compresses them


def test_a_file_with_pages_made_here_is_byte_for_byte_the_file_written_whole(tmp_path):
    """One part, pages of one zstd frame or one LZ4 block: the very bytes Arrow's writer
    writes, footer included."""
    table = _table()
    ids = pa.array([f"r{i:06d}" for i in range(200)], pa.large_string())
    for name in ("response_a_id", "response_b_id"):  # ids over one dictionary, as the responses
        table = table.append_column(name, pa.DictionaryArray.from_arrays(table.column(name[:-3]).chunk(0).indices, ids))
    splice = {**TEXT_SPLICE, "response_a_id": ("lz4", None), "response_b_id": ("lz4", None)}
    whole, spliced = tmp_path / "whole.parquet", tmp_path / "spliced.parquet"
    versions.write_version_file(table, whole)
    P.write_in_parts(table, spliced, versions.write_version_file, 1, lambda: _whole(table), splice)
    assert P._get(_raw_chunks(whole)[(b"response_b_id",)], P.CMD_CODEC) == P.CODECS["lz4"][0]  # LZ4_RAW
    assert spliced.read_bytes() == whole.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["spliced.parquet", "whole.parquet"]


def _raw_chunks(path) -> dict:
    """Each column chunk's ColumnMetaData as decoded, offsets left out."""
    meta, _ = P.file_footer(path)
    out = {}
    for chunk in P._get(P._get(meta, P.FMD_ROW_GROUPS)[1][0], P.RG_COLUMNS)[1]:
        md = P._get(chunk, P.CC_META_DATA)
        out[P._path(chunk)] = [x for x in md if x[0] not in (P.CMD_DATA_PAGE_OFFSET, P.CMD_DICTIONARY_PAGE_OFFSET)]
    return out


@pytest.mark.parametrize("n_parts", [1, 2, 3, 11])
def test_pages_made_here_in_many_frames_read_as_the_file_written_whole(tmp_path, monkeypatch, n_parts):
    monkeypatch.setattr(P, "FRAME_BYTES", 512)  # many frames per page
    calls = []
    make = P.plain_dictionary_page
    monkeypatch.setattr(P, "plain_dictionary_page", lambda *a, **k: calls.append(a[0]) or make(*a, **k))
    table = _table()
    whole, spliced = tmp_path / "whole.parquet", tmp_path / "spliced.parquet"
    versions.write_version_file(table, whole)
    P.write_in_parts(table, spliced, versions.write_version_file, n_parts, lambda: _whole(table), TEXT_SPLICE)
    assert len(calls) == 1  # two columns over one dictionary: one page
    assert pq.read_table(spliced).equals(pq.read_table(whole))
    assert pl.read_parquet(spliced).equals(pl.read_parquet(whole))  # a second, independent reader (its own zstd)
    raw_spliced, raw_whole = _raw_chunks(spliced), _raw_chunks(whole)
    for path in raw_whole:
        if path in ((b"response_a",), (b"response_b",)):
            # the same fields, values and size statistics; only the compressed size differs (frames)
            strip = lambda md: [x for x in md if x[0] != P.CMD_TOTAL_COMPRESSED]  # noqa: E731
            assert strip(raw_spliced[path]) == strip(raw_whole[path])
        else:
            assert raw_spliced[path] == raw_whole[path]
    rg_s, rg_w = pq.read_metadata(spliced).row_group(0), pq.read_metadata(whole).row_group(0)
    assert rg_s.total_byte_size == rg_w.total_byte_size
    assert sorted(os.listdir(tmp_path)) == ["spliced.parquet", "whole.parquet"]


def test_a_dictionary_with_repeats_and_rows_without_a_value_splice_right(tmp_path):
    """Arrow's writer writes a dictionary with repeated values plain; a page made here keeps the
    dictionary as it is (Parquet allows repeats), and the rows read the same."""
    texts = pa.array(["same", "other", "same", "é" * 100], pa.large_string())
    indices = pa.array([0, 1, None, 2, 3, 2, None, 0] * 50, pa.int32())
    table = pa.table({
        "response_a": pa.DictionaryArray.from_arrays(indices, texts),
        "response_b": pa.DictionaryArray.from_arrays(pa.array([3, 2, 1, 0] * 100, pa.int8()), texts),
        "n": pa.array(range(400), pa.int64()),
    })
    whole, spliced = tmp_path / "whole.parquet", tmp_path / "spliced.parquet"
    versions.write_version_file(table, whole)
    P.write_in_parts(table, spliced, versions.write_version_file, 2, lambda: _whole(table), TEXT_SPLICE)
    dense = table.cast(pa.schema([("response_a", pa.large_string()), ("response_b", pa.large_string()), ("n", pa.int64())]))
    for path in (whole, spliced):
        got = pq.read_table(path)
        assert got.cast(dense.schema).equals(dense)
        assert pl.read_parquet(path)["response_a"].to_list() == dense.column("response_a").to_pylist()
    enc = {pq.read_metadata(p).row_group(0).column(0).encodings for p in (whole, spliced)}
    assert any("RLE_DICTIONARY" in e for e in enc)  # the spliced file kept the dictionary
    # the size statistic counts each row's value (nulls none)
    expected = sum(len(v.encode()) for v in dense.column("response_a").to_pylist() if v is not None)
    assert P._unencoded_bytes(table.column("response_a").chunk(0)) == expected


def test_what_cannot_be_spliced_is_written_by_arrow(tmp_path):
    nulls = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["a", None]))
    numbers = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array([1, 2]))
    empty = pa.DictionaryArray.from_arrays(pa.array([None, None], pa.int32()), pa.array([], pa.string()))
    plain = pa.array(["a", "b"])
    for column in (nulls, numbers, empty, plain):
        assert not P.spliceable(pa.chunked_array([column]))
    assert P.spliceable(pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array(["a"]))]))
    assert not P.spliceable(pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array(["a"]))] * 2))


def _spy_whole_writes(monkeypatch):
    calls = []
    real = P.join_parts

    def join(*a, **k):
        try:
            return real(*a, **k)
        except P.ParquetPartsError as exc:
            calls.append(str(exc))
            raise
    monkeypatch.setattr(P, "join_parts", join)
    return calls


@pytest.mark.parametrize("case, match", [
    ("statistics", "has statistics"),
    ("codec", "compressed with codec"),
    ("page fails", "could not be made"),
])
def test_a_splice_that_does_not_fit_falls_back_to_the_file_written_whole(tmp_path, monkeypatch, case, match):
    table = _table(500)
    write, splice = versions.write_version_file, dict(TEXT_SPLICE)
    if case == "statistics":
        def write(t, path):
            pq.write_table(t, path, compression="zstd", compression_level=1, store_schema=False)  # statistics on every column
    elif case == "codec":
        splice = {"response_a": ("lz4", None)}
    else:
        monkeypatch.setattr(P, "plain_dictionary_page", lambda *a, **k: (_ for _ in ()).throw(MemoryError("no room")))
    refused = _spy_whole_writes(monkeypatch)
    path = tmp_path / "v.parquet"
    P.write_in_parts(table, path, write, 2, lambda: _whole(table), splice)
    assert refused and re.search(match, refused[0])
    assert pq.read_table(path).equals(table.cast(pq.read_table(path).schema))
    assert sorted(os.listdir(tmp_path)) == ["v.parquet"]


def test_a_snapshot_makes_one_page_per_dictionary(tmp_path, monkeypatch):
    """Four pages: the prompts' texts and ids, the responses' texts and ids (each of the last
    two serves both response columns)."""
    from test_snapshot_paths import _with_history

    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    _with_history(store)
    made = []
    make = P.plain_dictionary_page
    monkeypatch.setattr(P, "plain_dictionary_page", lambda values, *a, **k: made.append(len(values)) or make(values, *a, **k))
    v = store.snapshot("v")
    assert sorted(made) == sorted([v.stats["prompts"]] * 2 + [v.stats["responses"]] * 2)
    meta = pq.read_metadata(v.path).row_group(0)
    names = [meta.column(i).path_in_schema for i in range(meta.num_columns)]
    for name in ("prompt_id", "prompt", "response_a_id", "response_a", "response_b_id", "response_b"):
        assert "RLE_DICTIONARY" in meta.column(names.index(name)).encodings
    v.verify(deep=True)
    store.close()


def _history_store(tmp_path):
    from test_snapshot_paths import _with_history

    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    _with_history(store)
    return store


def test_the_response_page_begun_before_the_assembly_gives_the_same_file(tmp_path, monkeypatch):
    """The responses' page is begun as soon as the texts are read (for a file in parts); the
    writer takes it for both response columns instead of making it again, and the file is
    byte for byte the file whose pages are all made beside the writers."""
    store = _history_store(tmp_path)
    monkeypatch.setattr(versions, "PARTS_FROM_ROWS", 1)
    monkeypatch.setattr(versions, "WRITE_PARTS", 3)
    made = []
    make = P.plain_dictionary_page
    monkeypatch.setattr(P, "plain_dictionary_page", lambda values, *a, **k: made.append(len(values)) or make(values, *a, **k))
    begun = []
    early = versions._early_pages
    monkeypatch.setattr(versions, "_early_pages", lambda parts: begun.append(early(parts)) or begun[-1])
    v = store.snapshot("early")
    assert len(begun) == 1 and len(begun[0]) == 1  # one page begun early: the response texts'
    assert sorted(made) == sorted([v.stats["prompts"]] * 2 + [v.stats["responses"]] * 2)  # and not made again
    monkeypatch.setattr(versions, "_early_pages", lambda parts: {})
    late = store.snapshot("late")
    assert (late.hash, late.file_sha256) == (v.hash, v.file_sha256)
    assert open(late.path, "rb").read() == open(v.path, "rb").read()
    v.verify(deep=True)
    store.close()


def test_a_response_page_that_fails_early_leaves_the_file_written_whole(tmp_path, monkeypatch):
    store = _history_store(tmp_path)
    monkeypatch.setattr(versions, "PARTS_FROM_ROWS", 1)
    monkeypatch.setattr(versions, "WRITE_PARTS", 3)
    whole = store.snapshot("whole")
    make = P.plain_dictionary_page
    calls = []

    def failing_first(values, *a, **k):
        calls.append(len(values))
        if len(calls) == 1:  # the early page
            raise MemoryError("no room for the page")
        return make(values, *a, **k)

    monkeypatch.setattr(P, "plain_dictionary_page", failing_first)
    v = store.snapshot("after-a-failed-page")
    assert v.hash == whole.hash and v.to_polars().equals(whole.to_polars())
    v.verify(deep=True)
    assert sorted(os.listdir(tmp_path / "files" / "versions")) == sorted([os.path.basename(whole.path), os.path.basename(v.path)])
    store.close()


def test_a_snapshots_reads_hand_their_rows_over_once(tmp_path):
    """The futures of the column-wise reads give their row up when it is taken, so that the
    texts' bytes live only as long as the arrays made of them."""
    from workbench.bulk import transaction

    store = _history_store(tmp_path)
    with transaction(store, write=False) as tx:
        with versions._SqliteFetchers(store, tx) as fetch:
            jobs = versions._submit_text_scans(fetch, {"prompts": 10, "responses": 10})
            frame, texts = versions._text_frames("responses", jobs["responses"])
            assert all(fut.result() == [] for _, fut in jobs["responses"])
    assert frame["text"].to_list() == texts.to_pylist() and frame.height == len(texts) > 0
    store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_free_memory_hands_glibcs_free_pages_back():
    import ctypes

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("this C library has no malloc_trim")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [libc.malloc(64 << 10) for _ in range(3000)]  # 190 MB below the mmap threshold: the heap
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    for b in blocks[:-1]:  # the last block holds the heap's top: glibc keeps the rest as free chunks
        libc.free(b)
    held = rss()
    versions.release_free_memory()
    assert held - rss() > 100 << 20
    libc.free(blocks[-1])
    versions.release_free_memory()  # twice is fine
