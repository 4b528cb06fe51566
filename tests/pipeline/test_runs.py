"""The dataset folder across runs (pipeline/runs.py): what a re-run may do, what the switch leaves behind."""

from __future__ import annotations

import json

import pytest

from icpc.pipeline.config import RUN_FIELDS, CompressConfig
from icpc.pipeline.runs import (OutputState, collect_garbage, decide, inspect_output, new_version, plan_digest,
                                setting_differences, write_marker)
from icpc.config import to_dict

SETTINGS = to_dict(CompressConfig(input="/in", output="/out"))


def _state(manifest=None, marker=None, stray=False, out="/out") -> OutputState:
    return OutputState(out, manifest, marker, stray)


def _marker(version="v-1", **changes):
    return {"version": version, "started": "2026-12-02T00:00:00Z", "shards": 9, "config": {**SETTINGS, **changes}}


def test_an_empty_folder_starts_a_run_with_or_without_resume():
    assert decide(_state(), False, False, SETTINGS, RUN_FIELDS) == "new"
    assert decide(_state(), False, True, SETTINGS, RUN_FIELDS) == "new"


def test_a_complete_dataset_needs_overwrite_and_resume_of_it_is_a_no_op():
    done = {"version": "v-1", "config": SETTINGS}
    with pytest.raises(FileExistsError, match="already holds a dataset; pass --overwrite"):
        decide(_state(done), False, False, SETTINGS, RUN_FIELDS)
    assert decide(_state(done), True, False, SETTINGS, RUN_FIELDS) == "new"
    assert decide(_state(done), False, True, {**SETTINGS, "resume": True}, RUN_FIELDS) == "complete"
    with pytest.raises(FileExistsError, match=r"other settings \(shard_samples: 500 -> 50\)"):
        decide(_state(done), False, True, {**SETTINGS, "shard_samples": 50}, RUN_FIELDS)


def test_an_interrupted_run_is_named_and_resumed_only_with_the_same_settings(tmp_path):
    marker = _marker()
    with pytest.raises(FileExistsError, match=r"interrupted run v-1 \(started 2026-12-02T00:00:00Z, 0 of 9 shards "
                                              r"sealed\); pass --resume to continue it or --overwrite to start over"):
        decide(_state(marker=marker, out=str(tmp_path)), False, False, SETTINGS, RUN_FIELDS)
    assert decide(_state(marker=marker), False, True, {**SETTINGS, "max_reject_fraction": 0.5}, RUN_FIELDS) == "resume"
    assert decide(_state(marker=marker), True, False, SETTINGS, RUN_FIELDS) == "new"   # start over
    with pytest.raises(FileExistsError, match=r"image\.sides: \[28, 24, 20, 16, 12\] -> \[28, 14\]"):
        decide(_state(marker=marker), False, True, {**SETTINGS, "image": {**SETTINGS["image"], "sides": [28, 14]}},
               RUN_FIELDS)


def test_a_marker_of_a_run_that_wrote_its_manifest_is_not_an_interruption():
    state = _state({"version": "v-1", "config": SETTINGS}, _marker("v-1"))
    assert state.finished_marker
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        decide(state, False, False, SETTINGS, RUN_FIELDS)


def test_stray_shards_of_an_older_icpc_need_overwrite():
    with pytest.raises(FileExistsError, match="shards but no manifest.json"):
        decide(_state(stray=True), False, False, SETTINGS, RUN_FIELDS)


def test_versions_sort_by_start_time_and_are_unique():
    assert new_version(0, "aaaaaa") == "v-19700101T000000Z-aaaaaa"
    assert new_version(0) != new_version(0) and new_version(0) < new_version(1e9)


def test_setting_differences_name_nested_fields():
    assert setting_differences({"a": 1, "s": {"x": 1}}, {"a": 1, "s": {"x": 2}, "b": 3}) == ["b: None -> 3",
                                                                                            "s.x: 1 -> 2"]


def test_plan_digest_changes_with_any_record_field_or_the_spec():
    rec = {"key": "k", "source": "/x.png", "split": "train", "label": 1, "label_name": "a", "size": 10, "payload": None}
    base = plan_digest("spec", "v/train-000000.tar", [rec])
    assert base == plan_digest("spec", "v/train-000000.tar", [dict(rec)])
    for change in ({"size": 11}, {"label": 2}, {"source": "/y.png"}, {"payload": b"text"}):
        assert plan_digest("spec", "v/train-000000.tar", [{**rec, **change}]) != base
    assert plan_digest("other", "v/train-000000.tar", [rec]) != base


def test_the_switch_removes_the_replaced_dataset_strays_and_the_run_state(tmp_path):
    """An older icpc's dataset at the top of the folder, an abandoned version, temp files: all go; the new stays."""
    out = tmp_path
    old = {"shards": [{"name": "train-000000.tar"}], "index": "index.parquet", "rejects": "rejects.parquet"}
    for name in ("train-000000.tar", "index.parquet", "rejects.parquet", ".train-000001.tar.tmp-12"):
        (out / name).write_bytes(b"x")
    for name in ("v-new/train-000000.tar", "v-new/.train-000001.tar.tmp-99", "v-new/_run/parts/a.json",
                 "v-abandoned/train-000000.tar"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    (out / "manifest.json").write_text(json.dumps({"version": "v-new"}))
    write_marker(str(out), "v-new", 1, 1, SETTINGS, None)
    assert inspect_output(str(out)).finished_marker
    collect_garbage(str(out), "v-new", old)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["manifest.json", "v-new",
                                                                            "v-new/train-000000.tar"]
