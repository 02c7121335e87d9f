from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from lvmae.config import ConfigError, ExtractConfig, load_config
from lvmae.storage import (
    VIDEO_SCHEMA,
    StorageError,
    read_segments,
    read_videos,
    segment_schema,
    write_table_atomic,
)
from lvmae.video.inputs import InputError, list_videos, video_source
from tests.fresh import fresh_python

EXT = (".mp4", ".mkv")


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ["a/x.mp4", "a/b/y.MKV", "top.mp4", "a/notes.txt"]:
        (tmp_path / rel).write_bytes(b"data")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "missing.mp4")
    return tmp_path


def ids(sources):
    return [s.video_id for s in sources]


def test_directory_is_searched_recursively_by_extension(tree):
    got = list_videos(str(tree), EXT)
    assert ids(got) == ["a/b/y.MKV", "a/x.mp4", "dangling.mp4", "top.mp4"]
    assert got[1].uri == str(tree / "a" / "x.mp4") and got[1].size_bytes == 4


def test_glob_ids_are_relative_to_its_literal_prefix(tree):
    assert ids(list_videos(str(tree / "a" / "**" / "*.mp4"), EXT)) == ["x.mp4"]
    assert ids(list_videos(str(tree / "*.mp4"), EXT)) == ["dangling.mp4", "top.mp4"]


def test_list_file_paths_are_relative_to_the_list(tree):
    listing = tree / "videos.txt"
    listing.write_text(f"# my videos\na/x.mp4\n\n{tree / 'top.mp4'}\n")
    assert ids(list_videos(str(listing), EXT)) == ["a/x.mp4", "top.mp4"]


def test_single_video_file_and_fsspec_uri(tree):
    assert ids(list_videos(str(tree / "top.mp4"), EXT)) == ["top.mp4"]
    got = list_videos(f"file://{tree}/a", EXT)
    assert ids(got) == ["b/y.MKV", "x.mp4"]
    with video_source(got[1].uri) as path:
        assert path.read_bytes() == b"data"


def test_memory_filesystem_is_copied_locally():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/arch/v1.mp4", b"0123")
    got = list_videos("memory://arch", EXT)
    assert ids(got) == ["v1.mp4"]
    with video_source(got[0].uri) as remote:
        path = remote.wait()
        assert path.read_bytes() == b"0123" and path.name.startswith("lvmae-fetch-")
        assert remote.open().read() == b"0123"
    assert not path.exists()  # the temporary copy is gone


def test_bad_inputs_say_what_is_wrong(tree):
    with pytest.raises(InputError, match="does not exist"):
        list_videos(str(tree / "nope"), EXT)
    (tree / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        list_videos(str(tree / "empty"), EXT)
    (tree / "notes.md").write_text("x")
    with pytest.raises(InputError, match="neither a video"):
        list_videos(str(tree / "notes.md"), EXT)


def seg_table(rows, dim=2):
    return pa.table(
        {
            "video_id": [r[0] for r in rows],
            "segment_index": pa.array([r[1] for r in rows], pa.int32()),
            "start_s": [0.0] * len(rows),
            "end_s": [5.0] * len(rows),
            "frame_indices": [[0]] * len(rows),
            "frame_times_s": [[0.0]] * len(rows),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.array([r[2] for r in rows], np.float32).ravel()), dim
            ),
            "encoder": ["tiny"] * len(rows),
            "config_id": ["c"] * len(rows),
        },
        schema=segment_schema(dim),
    )


def test_segments_read_back_once_per_key_sorted(tmp_path):
    out = str(tmp_path)
    write_table_atomic(seg_table([("b", 0, [1, 0]), ("a", 1, [0, 1])]), out, "segments")
    write_table_atomic(seg_table([("a", 1, [0, 1]), ("a", 0, [1, 0])]), out, "segments")
    (tmp_path / "segments" / ".part-half-written.parquet.tmp").write_bytes(b"PAR1garbage")
    got = read_segments(out)
    keys = zip(got["video_id"].to_pylist(), got["segment_index"].to_pylist(), strict=True)
    assert list(keys) == [("a", 0), ("a", 1), ("b", 0)]
    assert read_segments(out, columns=["video_id"]).column_names == ["video_id"]


def test_readers_keep_the_row_written_last(tmp_path):
    """Outputs rewritten with --overwrite hold a key in several files: the readers keep the
    row of the file written last (file names sort in write order), after every write; a
    videos row also when the rows' updated_at are equal."""
    out, when = str(tmp_path), datetime(2026, 1, 1, tzinfo=timezone.utc)
    for k in range(12):
        write_table_atomic(seg_table([("a", 0, [k, 1]), ("b", k % 2, [1, k])]), out, "segments")
        got = read_segments(out).to_pydict()
        keys = zip(got["video_id"], got["segment_index"], strict=True)
        want = {("a", 0): [k, 1], ("b", k % 2): [1, k]}
        if k:  # the other b segment: from the write before
            want[("b", 1 - k % 2)] = [1, k - 1]
        assert dict(zip(keys, got["embedding"], strict=True)) == dict(sorted(want.items()))
        assert list(zip(got["video_id"], got["segment_index"], strict=True)) == sorted(want)
        row = {"video_id": "a", "status": "ok", "error": f"run {k}", "updated_at": when}
        write_table_atomic(pa.Table.from_pylist([row], schema=VIDEO_SCHEMA), out, "videos")
        assert read_videos(out)["error"].to_pylist() == [f"run {k}"]


def test_missing_segments_are_a_clear_error_and_videos_default_empty(tmp_path):
    with pytest.raises(StorageError, match="lvmae extract"):
        read_segments(str(tmp_path))
    assert read_videos(str(tmp_path)).num_rows == 0


def test_config_file_sections_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extract:\n  segment_s: 2.5\n  decoder: decord\n")
    config = load_config(ExtractConfig, path, {"decoder": None, "batch_size": 4})
    assert (config.segment_s, config.decoder, config.batch_size) == (2.5, "decord", 4)
    assert config.config_id() != ExtractConfig().config_id()
    assert ExtractConfig(batch_size=99).config_id() == ExtractConfig().config_id()  # speed only
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExtractConfig, tmp_path / "missing.yaml")
    path.write_text("segment_s: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(ExtractConfig, path)
    with pytest.raises(ConfigError, match="shot_min_s"):
        load_config(ExtractConfig, None, {"shot_min_s": 20.0, "shot_max_s": 10.0})


def test_a_set_to_null_sets_the_field_to_none():
    """``--set extract.range_s=null`` (one task per video) is applied, not ignored."""
    from lvmae.config import load_run_config, parse_sets

    assert ExtractConfig().range_s is not None
    sets = parse_sets(["extract.range_s=null"])
    assert load_config(ExtractConfig, None, {}, sets).range_s is None
    run = load_run_config(
        None, {"run.workdir": "w", "run.input": "v", "run.stages": ["extract"], **sets}
    )
    assert run.extract.range_s is None
    # a None that the field refuses is a clear error, naming the --set
    with pytest.raises(ConfigError, match=r"extract\.batch_size"):
        load_config(ExtractConfig, None, {}, parse_sets(["extract.batch_size=null"]))


def test_config_imports_no_video_or_torch_code():
    """Reading a config stays light: a fresh ``import lvmae.config`` loads neither torch nor
    the video stack (PyAV, decord, lvmae.video) nor the encoders or the LV-MAE method; of
    ``lvmae.encoders`` only the plain-data registry (and its empty package)."""
    code = (
        "import sys; import lvmae.config; "
        "heavy = {'torch', 'av', 'decord'}; "
        "ours = ('lvmae.video', 'lvmae.encoders', 'lvmae.mae'); "
        "registry = {'lvmae.encoders', 'lvmae.encoders.registry'}; "
        "print(sorted(m for m in sys.modules if m not in registry and (m.split('.')[0] in heavy "
        "or any(m == p or m.startswith(p + '.') for p in ours))))"
    )
    assert fresh_python(code) == "[]"


def test_storage_settings_refuse_credentials_without_echoing_them():
    from lvmae.config import parse_sets

    ok = load_config(ExtractConfig, None, {}, parse_sets(["extract.storage.max_attempts=3"]))
    assert ok.storage.max_attempts == 3 and ok.storage.stream
    for key in ("secret_access_key", "aws_access_key_id", "session_token"):
        with pytest.raises(ConfigError, match="credentials never go in the config") as info:
            load_config(ExtractConfig, None, {}, {f"extract.storage.{key}": "lvmae-SECRET-42"})
        assert "lvmae-SECRET-42" not in str(info.value)
    with pytest.raises(ConfigError, match="needs a scheme"):
        load_config(ExtractConfig, None, {}, {"extract.storage.endpoint_url": "minio:9000"})
