"""File names and ids (``files.meta``): what a client sends never becomes a path."""

from __future__ import annotations

import pytest

from files.errors import BadName
from files.meta import FileMeta, clean_name, new_file_id, valid_file_id


@pytest.mark.parametrize(("raw", "kept"), [
    (None, "file"), ("", "file"), ("cat.jpg", "cat.jpg"), ("  cat.jpg  ", "cat.jpg"),
    ("../../etc/passwd", "passwd"), ("C:\\Users\\eve\\secret.txt", "secret.txt"),
    ("/abs/path/x.pdf", "x.pdf"), ("ünïcødé ✓.png", "ünïcødé ✓.png"),
    ("a" * 255, "a" * 255), ("dir/" + "b" * 255, "b" * 255)])
def test_names_keep_only_the_last_part(raw: str | None, kept: str) -> None:
    assert clean_name(raw) == kept


@pytest.mark.parametrize(("raw", "why"), [
    ("a\x00b.txt", "control character"), ("evil\n.txt", "control character"),
    ("x\ud800.txt", "lone surrogate"), ("a" * 256, "longer than 255"), ("../", "empty"),
    ("dir/..", "empty"), (".", "empty"), ("  ", "empty")])
def test_bad_names_are_refused(raw: str, why: str) -> None:
    with pytest.raises(BadName, match=why):
        clean_name(raw)


def test_ids_are_random_and_checked() -> None:
    ids = {new_file_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(valid_file_id(i) for i in ids)
    for bad in ("", "../" + "a" * 19, "a" * 21, "a" * 23, "a" * 21 + "/", "a" * 21 + "\x00",
                "a" * 21 + "."):
        assert not valid_file_id(bad)


def test_metadata_round_trips_and_refuses_what_it_did_not_write() -> None:
    meta = FileMeta(id=new_file_id(), room="lobby", user="alice", name="a.png", size=3,
                    type="image/png", created=1.5, width=2, height=1, thumb=True, seq=4)
    assert FileMeta.from_json(meta.to_json()) == meta
    assert meta.public() == {"id": meta.id, "name": "a.png", "size": 3, "type": "image/png",
                             "width": 2, "height": 1, "thumb": True}
    for raw in (b"", b"[]", b'{"id": "x"}', meta.to_json().replace(b'"size":3', b'"size":"3"')):
        with pytest.raises(ValueError):
            FileMeta.from_json(raw)
