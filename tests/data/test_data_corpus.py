"""`pdc data init`: the embedded default corpus is written byte-identically on every run."""

from __future__ import annotations

from PIL import Image

from pdc.fsutil import tree_hash
from pdc.data.corpus import DEFAULT_CORPUS, init_default_corpus


def test_init_is_deterministic(tmp_path):
    a = init_default_corpus(tmp_path / "a" / "default")
    b = init_default_corpus(tmp_path / "b" / "default")
    assert [p.name for p in a] == sorted(f"{n}.png" for n in DEFAULT_CORPUS)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    for p in a:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and min(im.size) >= 256
    # re-running over an existing folder replaces it with the same bytes and leaves nothing behind
    before = tree_hash(tmp_path / "a")
    (tmp_path / "a" / "default" / "extra.png").write_bytes(b"x")
    init_default_corpus(tmp_path / "a" / "default")
    assert tree_hash(tmp_path / "a") == before
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["default"]
