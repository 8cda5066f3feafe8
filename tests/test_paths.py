"""The path layer on local disk and on a real GCS API (fake-gcs-server on loopback)."""

import os

import pytest

from contrastive_jax import paths
from contrastive_jax.errors import ConfigError, InputNotFoundError


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("gcs")
    return f"gs://cj-test/{request.node.name.replace('[', '-').strip(']')}-{os.getpid()}"


def test_write_read_glob_list_move(root):
    a = paths.join(root, "d", "a-0.txt")
    paths.makedirs(paths.dirname(a))
    paths.write_text(a, "héllo\n")
    paths.write_bytes(paths.join(root, "d", "a-1.txt"), b"\x00\x01")
    paths.write_text(paths.join(root, "d", "b.json"), "{}")
    paths.write_text(paths.join(root, "d", "sub", "c.txt"), "c")
    assert paths.read_text(a) == "héllo\n"
    assert paths.read_bytes(paths.join(root, "d", "a-1.txt")) == b"\x00\x01"
    assert paths.exists(a) and paths.isfile(a) and not paths.isdir(a)
    assert paths.isdir(paths.join(root, "d")) and not paths.exists(paths.join(root, "nope"))
    assert paths.glob(paths.join(root, "d", "a-*.txt")) == [
        paths.join(root, "d", "a-0.txt"), paths.join(root, "d", "a-1.txt")]
    assert paths.glob(paths.join(root, "*", "sub", "*.txt")) == [
        paths.join(root, "d", "sub", "c.txt")]
    assert paths.glob(paths.join(root, "d", "zz-*")) == []
    assert paths.listdir(paths.join(root, "d")) == ["a-0.txt", "a-1.txt", "b.json", "sub"]
    with paths.open_file(a, "r", encoding="utf-8", newline="") as f:
        assert f.read() == "héllo\n"

    paths.move(paths.join(root, "d", "sub"), paths.join(root, "moved", "sub"))
    assert not paths.exists(paths.join(root, "d", "sub", "c.txt"))
    assert paths.read_text(paths.join(root, "moved", "sub", "c.txt")) == "c"
    paths.copy(a, paths.join(root, "copy.txt"))
    assert paths.read_text(paths.join(root, "copy.txt")) == "héllo\n"
    paths.rmtree(paths.join(root, "moved"))
    assert not paths.exists(paths.join(root, "moved", "sub", "c.txt"))


def test_urls_never_become_local(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "gs://cj-test/never-local/x.txt"
    assert paths.absolute(url) == url and paths.is_absolute(url)
    assert paths.join("gs://cj-test/a", "b") == "gs://cj-test/a/b"
    paths.makedirs("gs://cj-test/never-local")
    paths.write_text(url, "x")
    assert os.listdir(tmp_path) == []  # no local "gs:" directory


def test_missing_bucket_is_one_line(gcs):
    with pytest.raises(InputNotFoundError, match="gs://no-such-bucket/run: the bucket "
                                                 "gs://no-such-bucket does not exist"):
        paths.check_reachable("gs://no-such-bucket/run", "--workdir")
    paths.check_reachable("gs://cj-test/run", "--workdir")  # no error
    paths.check_reachable("relative/local", "--workdir")  # local: nothing to check
    with pytest.raises(ConfigError, match="scheme"):
        paths.check_reachable("nope://x/y", "--workdir")
