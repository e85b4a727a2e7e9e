"""Batch infrastructure: manifests, resume, failure isolation, sharding, merging."""

from __future__ import annotations

import json

import pytest

from diffmix.batch import (
    Item,
    append_result,
    load_results,
    merge_results,
    read_manifest,
    run_items,
    shard,
)


def test_csv_and_jsonl_manifests(tmp_path):
    (tmp_path / "m.csv").write_text("id,input,target\na,x.wav,spotify\nb,/abs/y.wav,\n")
    items = read_manifest(tmp_path / "m.csv")
    assert [i.id for i in items] == ["a", "b"]
    assert items[0].input == str(tmp_path / "x.wav") and items[0].extra == {"target": "spotify"}
    assert items[1].input == "/abs/y.wav" and items[1].extra == {}
    (tmp_path / "m.jsonl").write_text('{"input": "s1.flac"}\n\n{"input": "s2.flac", "lufs": -16}\n')
    items = read_manifest(tmp_path / "m.jsonl")
    assert [i.id for i in items] == ["s1", "s2"] and items[1].extra == {"lufs": -16}


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("dup.csv", "id,input\na,x.wav\na,y.wav\n", "duplicate id 'a'"),
        ("noin.csv", "id,input\na,\n", "row 1 has no 'input'"),
        ("bad.jsonl", '{"input": "a"}\n{oops\n', "line 2 is not JSON"),
        ("empty.csv", "id,input\n", "no items"),
    ],
)
def test_bad_manifests(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        read_manifest(tmp_path / name)


def test_shards_are_disjoint_and_cover():
    items = [Item(str(i), f"{i}.wav") for i in range(7)]
    shards = [shard(items, r, 3) for r in range(3)]
    ids = [i.id for s in shards for i in s]
    assert sorted(ids, key=int) == [str(i) for i in range(7)] and len(set(ids)) == 7


def _processor(log, tmp_path, fail=()):
    def process(group):
        log.append([it.id for it in group])
        for it in group:
            if it.id in fail:
                raise ValueError(f"{it.id}: audio is digital silence")
        for it in group:
            out = tmp_path / f"{it.id}.out"
            out.write_text("x")
            yield {"id": it.id, "status": "ok", "outputs": {"audio": str(out)}}

    return process


def test_failures_are_isolated_and_recorded(tmp_path):
    items = [Item(str(i), f"{i}.wav") for i in range(4)]
    log = []
    res = run_items(items, _processor(log, tmp_path, fail={"2"}), tmp_path / "r.jsonl", group_size=4)
    assert [res[str(i)]["status"] for i in range(4)] == ["ok", "ok", "failed", "ok"]
    assert res["2"]["error"] == "ValueError: 2: audio is digital silence"


def test_rerun_skips_done_items_and_redoes_missing_outputs(tmp_path):
    items = [Item(str(i), f"{i}.wav") for i in range(3)]
    results = tmp_path / "r.jsonl"
    run_items(items, _processor([], tmp_path), results)
    (tmp_path / "1.out").unlink()  # an output lost: the item must be redone
    with results.open("a") as fh:
        fh.write('{"id": "2", "stat')  # a torn line from a kill
    log = []
    run_items(items, _processor(log, tmp_path), results)
    assert log == [["1"]]


def test_merge_keeps_manifest_order(tmp_path):
    items = [Item(str(i), f"{i}.wav") for i in range(4)]
    for r in range(2):
        for it in shard(items, r, 2):
            append_result(tmp_path / f"rank{r}.jsonl", {"id": it.id, "status": "ok"})
    rows = merge_results([tmp_path / "rank0.jsonl", tmp_path / "rank1.jsonl"], items, tmp_path / "all.jsonl")
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert [json.loads(x)["id"] for x in (tmp_path / "all.jsonl").read_text().splitlines()] == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert set(load_results(tmp_path / "all.jsonl")) == {"0", "1", "2", "3"}
