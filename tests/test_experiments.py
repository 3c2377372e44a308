from __future__ import annotations

import json

import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.cache import ArtifactCache
from backdoorlab.experiments.config import load_config, parse_config
from backdoorlab.experiments.store import RunRecord, RunStore


def test_defaults_are_the_demo():
    c = parse_config({})
    assert (c.data.name, c.model.name, c.attack.name, c.attack.target, c.attack.rate) == (
        "mnist5k",
        "lenet",
        "badnets",
        0,
        0.1,
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"attack": {"rate": 1.5}}, "attack.rate"),
        ({"attack": {"rate": 0}}, "attack.rate"),
        ({"train": {"epochs": -1}}, "train.epochs"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"data": {"train_per_class": 0}}, "data.train_per_class"),
        ({"trian": {}}, "trian"),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
    ],
)
def test_bad_fields_are_named(raw, field):
    with pytest.raises(BackdoorLabError) as err:
        parse_config(raw)
    assert str(err.value).startswith(field + ":")


def test_load_config_errors(tmp_path):
    with pytest.raises(BackdoorLabError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(BackdoorLabError, match="not valid YAML"):
        load_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: x\ntrain: {epochs: 2}\n")
    assert load_config(ok).train.epochs == 2


def test_digest_ignores_name_but_not_seed():
    a, b, c = parse_config({"name": "a"}), parse_config({"name": "b"}), parse_config({"seed": 1})
    assert a.digest() == b.digest() != c.digest()


def test_cache_writes_once_and_never_half(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def write(folder):
        calls.append(folder)
        (folder / "x.txt").write_text("done")

    p1, hit1 = cache.get_or_create("k", "abc", write)
    p2, hit2 = cache.get_or_create("k", "abc", write)
    assert (hit1, hit2) == (False, True) and p1 == p2 and len(calls) == 1
    assert (p1 / "x.txt").read_text() == "done"

    def crash(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get_or_create("k", "def", crash)
    assert not cache.has("k", "def")
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["abc"]


def _record(run_id: str, name: str = "r") -> RunRecord:
    return RunRecord(run_id, name, 1.0, 2.0, {"a": 1}, {"victim": {"clean_acc": 0.5}}, {}, None)


def test_store_roundtrip_and_prefix(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    store.add(_record("abcd1234"))
    store.add(_record("abff0000"))
    assert store.get("abc").id == "abcd1234"
    assert [r.id for r in store.list()] and len(store.list()) == 2
    with pytest.raises(BackdoorLabError, match="ambiguous"):
        store.get("ab")
    with pytest.raises(BackdoorLabError, match="no run"):
        store.get("ffff")
    with pytest.raises(BackdoorLabError, match="not valid"):
        store.get("../etc")
    store.set_report("abcd1234", "/x.html")
    assert store.get("abcd").report == "/x.html"
    assert json.dumps(store.get("abcd").metrics)
