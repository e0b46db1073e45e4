"""agent/core/files.py: the one atomic write every file others may read goes through."""

from __future__ import annotations

import json
import stat

import pytest

from promptclimb.agent.core.files import write_atomic, write_json_atomic, write_text_atomic


def test_a_write_replaces_the_file_whole_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "deep" / "folder" / "summary.json"  # folders are made on the way
    write_json_atomic(target, {"best": "a photo of a {}.", "accuracy": 0.5, "note": "café"})
    assert json.loads(target.read_text(encoding="utf-8"))["note"] == "café"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # run files and caches are meant to be shared
    write_text_atomic(target, "second\n")
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]  # no temp file left


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"the verified model")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half of a new")
        raise ValueError("checksum mismatch")

    with pytest.raises(ValueError, match="checksum mismatch"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"the verified model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_the_writer_gets_a_path_beside_the_target(tmp_path):
    """torch.save / safetensors / DataFrame.to_csv write to a path: the temp file is in the
    target's folder (so the rename stays on one file system) and never the target itself."""
    seen = []
    write_atomic(tmp_path / "features.safetensors", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0].parent == tmp_path and seen[0].name != "features.safetensors"
    assert not seen[0].exists() and (tmp_path / "features.safetensors").read_bytes() == b"x"


def test_json_keeps_a_list_of_numbers_on_one_line_and_reads_back_the_same(tmp_path):
    confusion = [[c * 7 + r for c in range(50)] for r in range(50)]
    obj = {"confusion": confusion, "prob": [0.5, -1e-05, 2.5e+20], "labels": ["a", "b"], "mixed": [1, None],
           # the shape the rewrite looks for, inside strings, where JSON escapes the newlines
           "text": "[\n1,\n2\n]", "keys": {"[\n  1,\n  2\n]": [3]}}
    path = write_json_atomic(tmp_path / "summary.json", obj)
    text = path.read_text()
    assert json.loads(text) == obj
    assert "  [0, 7, 14, 21," in text and '"prob": [0.5, -1e-05, 2.5e+20]' in text
    assert len(text.splitlines()) < 80  # not 2,500 numbers on lines of their own
    assert '"labels": [\n    "a",' in text  # lists holding anything else stay indented


def test_a_symlink_is_written_through_and_stays_a_symlink(tmp_path):
    """A user's report.html linked from elsewhere: the file linked to gets the new content
    (atomically, beside it), the link stays a link, and the file keeps its mode."""
    elsewhere = tmp_path / "shared" / "page.html"
    elsewhere.parent.mkdir()
    elsewhere.write_text("old")
    elsewhere.chmod(0o600)
    link = tmp_path / "report.html"
    link.symlink_to(elsewhere)
    assert write_text_atomic(link, "new") == link
    assert link.is_symlink() and link.resolve() == elsewhere and elsewhere.read_text() == "new"
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "shared"]
    assert [p.name for p in elsewhere.parent.iterdir()] == ["page.html"]  # no temp file left

    dangling = tmp_path / "dangling.html"  # a link to a file not made yet: made where it points
    dangling.symlink_to(tmp_path / "shared" / "later.html")
    write_text_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "shared" / "later.html").read_text() == "made"


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    import os

    fifo = tmp_path / "page"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there: opening to write does not wait
    try:
        write_text_atomic(fifo, "through the pipe")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert [p.name for p in tmp_path.iterdir()] == ["page"]
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path, "x")
