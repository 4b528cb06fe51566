"""The same URLs everywhere, on a real S3 protocol: moto's standalone server on 127.0.0.1.

Inputs in a bucket -> ``icpc compress`` (Ray workers read the inputs and write the shards to
s3://) -> two-rank DDP training and evaluation reading the dataset by its URL -> ``--overwrite``
switching to a new version in the bucket. Every object is checked with boto3, independently of
the project's storage layer.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import TRAIN_ARGS, run_cli
from tests.pipeline.inputs import small_folder

BUCKET = "icpc-test"
MOTO = str(Path(sys.executable).with_name("moto_server"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port, a bucket, and the standard AWS_* variables pointing at it
    (for this process and every subprocess: Ray workers, torchrun ranks); stopped afterwards."""
    import boto3

    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                              stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    server.kill()
                    pytest.fail("moto_server did not start:\n" + log.read_text())
                time.sleep(0.2)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        try:
            yield client
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def upload(client, folder: Path, prefix: str) -> list[str]:
    urls = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            key = f"{prefix}/{p.relative_to(folder).as_posix()}"
            client.put_object(Bucket=BUCKET, Key=key, Body=p.read_bytes())
            urls.append(f"s3://{BUCKET}/{key}")
    return urls


def objects(client, prefix: str) -> dict[str, int]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        out.update({o["Key"][len(prefix) + 1:]: o["Size"] for o in page.get("Contents", [])})
    return out


def get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def table(client, key: str) -> list[dict]:
    import io

    return pq.read_table(io.BytesIO(get(client, key))).to_pylist()


def check_dataset(client, prefix: str) -> dict:
    """The manifest names exactly the objects under ``prefix`` (bar itself); every shard matches its sha256."""
    m = json.loads(get(client, f"{prefix}/manifest.json"))
    listed = objects(client, prefix)
    version = m["version"]
    named = {s["name"] for s in m["shards"]} | {m["index"], m["rejects"], *m["wids"].values()}
    assert set(listed) == named | {"manifest.json"}, sorted(set(listed) ^ (named | {"manifest.json"}))
    assert all(n.startswith(version + "/") for n in named)
    for s in m["shards"]:
        data = get(client, f"{prefix}/{s['name']}")
        assert len(data) == s["bytes"] == listed[s["name"]]
        assert hashlib.sha256(data).hexdigest() == s["sha256"], s["name"]
    return m


@pytest.mark.integration
def test_compress_to_a_bucket_then_train_and_evaluate_from_it(s3_server, image_folder, tmp_path):
    client = s3_server
    folder = small_folder(tmp_path / "raw", image_folder, 24, classes=("Bag", "Coat", "Dress", "Sandal"))
    (folder / "train" / "Bag" / "empty.png").write_bytes(b"")
    (folder / "train" / "Bag" / "notes.txt").write_text("not an image")
    inputs = upload(client, folder, "raw")
    data = f"s3://{BUCKET}/data"

    run_cli("compress", "--input", f"s3://{BUCKET}/raw", "--output", data, "--shard-samples", "32")
    m = check_dataset(client, "data")
    index = table(client, f"data/{m['index']}")
    rejects = table(client, f"data/{m['rejects']}")
    assert sorted(r["source"] for r in index + rejects) == sorted(inputs)   # every input once, by its URL
    assert {r["source"].rsplit("/", 1)[1]: r["stage"] for r in rejects} == {"empty.png": "read", "notes.txt": "scan"}
    assert m["counts"]["test"] == 4 * 8 and len(index) == sum(m["counts"].values())

    run = tmp_path / "run"
    run_cli("train", "--nproc-per-node", "2", "--data", data, "--output", str(run), "--epochs", "1", *TRAIN_ARGS)
    state_data = json.loads((run / "config.json").read_text())["data"]
    assert state_data == data and (run / "last.pt").exists()
    assert len((run / "metrics.csv").read_text().splitlines()) == 2   # header + one epoch
    run_cli("evaluate", "--checkpoint", str(run / "last.pt"), "--output", str(tmp_path / "eval"),
            "--set", "thresholds=[0.0,1.0]")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["samples"] == m["counts"]["test"] and len(report["levels"]) == 5
    run_cli("calibrate", "--checkpoint", str(run / "last.pt"), "--cost", "tokens", "--output", str(tmp_path / "cal"))
    assert json.loads((tmp_path / "cal" / "thresholds.json").read_text())

    # --overwrite: a new version beside the old one, the manifest PUT switches, then the old version goes
    run_cli("compress", "--input", f"s3://{BUCKET}/raw", "--output", data, "--shard-samples", "50", "--overwrite")
    m2 = check_dataset(client, "data")
    assert m2["version"] != m["version"] and m2["config"]["shard_samples"] == 50
    assert not [k for k in objects(client, "data") if k.startswith(m["version"])]


@pytest.mark.integration
def test_a_training_output_in_a_bucket_checkpoints_resumes_and_evaluates(s3_server, compressed, tmp_path):
    """``--output s3://...``: checkpoints and metrics are objects (read back with boto3 and torch), a live
    holder's lease object refuses a second run and is removed when its run ends, ``--resume`` continues
    from the bucket's checkpoint, and ``icpc evaluate`` takes the checkpoint's URL."""
    import io

    import torch

    client, run = s3_server, f"s3://{BUCKET}/runs/icpc"
    args = ["train", "--nproc-per-node", "2", "--data", str(compressed), "--output", run,
            "--set", "max_steps_per_epoch=4", *TRAIN_ARGS]
    run_cli(*args, "--epochs", "1")
    listed = objects(client, "runs/icpc")
    assert {"last.pt", "metrics.csv", "config.json", "ranks/rank-0.jsonl", "ranks/rank-1.jsonl"} <= set(listed)
    assert [k for k in listed if k.startswith("checkpoints/step-")] and ".lock" not in listed, sorted(listed)
    saved = torch.load(io.BytesIO(get(client, "runs/icpc/last.pt")), weights_only=True)
    assert (saved["epoch"], saved["step"], saved["loader"]["batches"]) == (1, 4, 0)
    assert len(get(client, "runs/icpc/metrics.csv").decode().splitlines()) == 2   # header + epoch 1

    holder = {"host": "node-7", "pid": 4242, "started": "2026-12-02T05:00:00Z", "command": "icpc train ...",
              "renewed": time.time()}
    client.put_object(Bucket=BUCKET, Key="runs/icpc/.lock", Body=json.dumps(holder).encode())
    refused = subprocess.run([sys.executable, "-m", "icpc.cli", *args, "--epochs", "2", "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "in use by a live training run (host node-7, pid 4242" in (
        refused.stdout + refused.stderr), refused.stdout + refused.stderr
    client.delete_object(Bucket=BUCKET, Key="runs/icpc/.lock")

    resumed = run_cli(*args, "--epochs", "2", "--resume")
    assert f"resumed from {run}/last.pt" in resumed.stdout, resumed.stdout
    saved = torch.load(io.BytesIO(get(client, "runs/icpc/last.pt")), weights_only=True)
    assert (saved["epoch"], saved["step"]) == (2, 8)
    assert len(get(client, "runs/icpc/metrics.csv").decode().splitlines()) == 3

    run_cli("evaluate", "--checkpoint", f"{run}/last.pt", "--output", str(tmp_path / "eval"),
            "--set", "thresholds=[0.0,1.0]")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["samples"] > 0


# Takes the output lock of argv[1] once the file argv[2] exists (so the takers start together), prints
# "took PID" or "refused REASON", and holds what it took until its stdin closes.
LEASE_TAKER = """
import os, sys, time
from icpc.training.supervision import OutputLock
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    lock = OutputLock(sys.argv[1]).acquire()
    print("took", os.getpid(), flush=True)
except FileExistsError as exc:
    lock = None
    print("refused", exc, flush=True)
sys.stdin.read()
if lock is not None:
    lock.release()
"""


@pytest.mark.parametrize("stale", [False, True], ids=["no-lease", "a-stale-lease"])
def test_of_runs_taking_one_lease_at_the_same_moment_exactly_one_gets_it(s3_server, tmp_path, stale):
    """The lease is a conditional create (If-None-Match: *), a stale one is replaced with If-Match: its ETag;
    with read-then-write every taker saw no live lease and all three took it."""
    client, prefix = s3_server, f"lease-{'stale' if stale else 'new'}"
    if stale:  # a run that died an hour ago
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/.lock", Body=json.dumps(
            {"host": "node-7", "pid": 4242, "started": "2026-12-02T05:00:00Z", "command": "icpc train ...",
             "renewed": time.time() - 3600}).encode())
    go = tmp_path / "go"
    takers = [subprocess.Popen([sys.executable, "-c", LEASE_TAKER, f"s3://{BUCKET}/{prefix}", str(go)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        assert [t.stdout.readline().strip() for t in takers] == ["ready"] * 3
        go.touch()
        results = [t.stdout.readline().strip() for t in takers]
        assert sorted(r.split()[0] for r in results) == ["refused", "refused", "took"], results
        winner = next(int(r.split()[1]) for r in results if r.startswith("took"))
        assert json.loads(get(client, f"{prefix}/.lock"))["pid"] == winner  # the lease names the run that has it
        assert all("in use by a live training run" in r or "at the same moment" in r
                   for r in results if r.startswith("refused")), results
    finally:
        for t in takers:
            t.communicate(timeout=60)
    assert ".lock" not in objects(client, prefix)  # the winner's release removed it
