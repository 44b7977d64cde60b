"""watch_files: which files are watched, and when a change is acted on (sans-IO), and the
stamps that see an ``mv`` over a file and a Kubernetes ``..data`` symlink swap."""

from __future__ import annotations

import os

from gateway import testing as support
from gateway.testing import prepare_text
from gateway.watch import FileLooks, stamps, watched_files


def test_the_watched_files_are_the_listeners_tls_and_rule_files(tmp_path: object) -> None:
    p = support.make_pki(str(tmp_path))
    acl = os.path.join(str(tmp_path), "acl")
    with open(acl, "w") as f:
        f.write("topic readwrite #\n")
    conf = support.listener_conf("a", 18000, 1883, p, {"acl_file": acl})
    conf += support.listener_conf("b", 18001, 1883, p)  # the same files: watched once
    conf += support.listener_conf("w", 18002, 1883, p, family="ws")  # no TLS files
    config = prepare_text(conf).config
    assert watched_files(config) == (p.server_cert, p.server_key, p.ca_file, acl)


def test_a_change_is_acted_on_once_two_looks_agree() -> None:
    a1, a2, a3 = (1, 10, 100, 1), (1, 11, 100, 2), (1, 12, 90, 3)
    looks = FileLooks({"cert": a1, "key": a1})
    assert looks.look({"cert": a1, "key": a1}) == []  # nothing changed
    assert looks.look({"cert": a2, "key": a1}) == []  # seen once: not yet
    assert looks.pending is not None
    assert looks.look({"cert": a2, "key": a3}) == []  # still moving: wait again
    assert looks.look({"cert": a2, "key": a3}) == ["cert", "key"]  # settled
    assert looks.look({"cert": a2, "key": a3}) == []  # acted on once
    assert looks.look({"cert": None, "key": a3}) == []
    assert looks.look({"cert": None, "key": a3}) == ["cert"]  # removed: a reload refuses it


def test_a_change_that_goes_back_before_settling_is_no_change() -> None:
    a1, a2 = (1, 10, 100, 1), (1, 11, 100, 2)
    looks = FileLooks({"cert": a1})
    assert looks.look({"cert": a2}) == []
    assert looks.look({"cert": a1}) == [] and looks.pending is None


def test_stamps_see_a_move_over_the_file_and_a_symlink_swap(tmp_path: object) -> None:
    d = str(tmp_path)
    path = os.path.join(d, "cert.pem")
    with open(path, "w") as f:
        f.write("one")
    before = stamps((path,))
    new = os.path.join(d, "new.pem")
    with open(new, "w") as f:
        f.write("two")  # the same size: the inode tells
    os.replace(new, path)
    assert stamps((path,)) != before
    # A Kubernetes secret: cert.pem -> ..data/cert.pem, ..data -> ..v1, swapped to ..v2.
    secret = os.path.join(d, "secret")
    for version in ("..v1", "..v2"):
        os.makedirs(os.path.join(secret, version))
        with open(os.path.join(secret, version, "cert.pem"), "w") as f:
            f.write(version)
    os.symlink("..v1", os.path.join(secret, "..data"))
    linked = os.path.join(secret, "cert.pem")
    os.symlink(os.path.join("..data", "cert.pem"), linked)
    before = stamps((linked,))
    os.symlink("..v2", os.path.join(secret, "..tmp"))
    os.replace(os.path.join(secret, "..tmp"), os.path.join(secret, "..data"))
    assert stamps((linked,)) != before
    assert stamps((os.path.join(d, "missing"),)) == {os.path.join(d, "missing"): None}
