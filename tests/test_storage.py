"""S3 storage against a real S3-protocol server (moto's standalone ``moto_server``, started here): local-first
mirrors keyed by ETag, clear errors, checkpoints uploaded as they are committed, and a run on a fresh node that
resumes from the newest complete remote checkpoint (a partial one skipped) with the same losses."""

import json

import pytest
from conftest import start_moto_server
from test_train import read_metrics, run

from wmtp_jax import storage


def test_mirror_is_local_first_fetched_once_and_again_when_the_etag_changes(s3, tmp_path):
    client, bucket = s3
    assert storage.local_path(tmp_path / "here", tmp_path / "cache") == tmp_path / "here"  # local: as is
    for name, body in (("params.json", b"{}"), ("sub/weights.bin", b"x" * 1000)):
        client.put_object(Bucket=bucket, Key=f"models/m/{name}", Body=body)
    first = storage.local_path(f"s3://{bucket}/models/m", tmp_path / "cache", progress=False)
    assert (first / "params.json").read_bytes() == b"{}" and (first / "sub" / "weights.bin").stat().st_size == 1000
    (first / "params.json").write_bytes(b"touched locally")  # a second fetch would overwrite this
    assert storage.local_path(f"s3://{bucket}/models/m", tmp_path / "cache", progress=False) == first
    assert (first / "params.json").read_bytes() == b"touched locally"
    client.put_object(Bucket=bucket, Key="models/m/params.json", Body=b'{"dim": 64}')
    second = storage.local_path(f"s3://{bucket}/models/m", tmp_path / "cache", progress=False)
    assert second != first and (second / "params.json").read_bytes() == b'{"dim": 64}'
    one = storage.local_path(f"s3://{bucket}/models/m/params.json", tmp_path / "cache", progress=False)
    assert one.name == "params.json" and one.read_bytes() == b'{"dim": 64}'
    assert not list((tmp_path / "cache").rglob("*.partial-*"))


def test_bad_remote_paths_name_the_url(s3, tmp_path, monkeypatch):
    _, bucket = s3
    with pytest.raises(storage.StorageError, match="s3://nobucket/x: bucket 'nobucket' does not exist"):
        storage.local_path("s3://nobucket/x", tmp_path)
    with pytest.raises(storage.StorageError, match=f"s3://{bucket}/missing: no such object or prefix"):
        storage.local_path(f"s3://{bucket}/missing", tmp_path)
    with pytest.raises(storage.StorageError, match="expected s3://bucket/key"):
        storage.split_uri("s3:///key")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(storage.StorageError, match=f"s3://{bucket}/x: no AWS credentials"):
        storage.local_path(f"s3://{bucket}/x", tmp_path)


def test_access_denied_names_the_url(s3, tmp_path, monkeypatch):
    """A second server with moto's IAM checks on (after the 5 set-up requests): a user allowed only to list the
    bucket is refused the object, and the error names the URL; nothing is left in the cache."""
    import boto3

    proc, endpoint = start_moto_server(tmp_path / "iam.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "5"})
    try:
        admin = dict(endpoint_url=endpoint, region_name="us-east-1")
        boto3.client("s3", **admin).create_bucket(Bucket="locked")
        boto3.client("s3", **admin).put_object(Bucket="locked", Key="model/params.json", Body=b"{}")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="reader", PolicyName="list-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        for uri in ("s3://locked/model/params.json", "s3://locked/model"):
            with pytest.raises(storage.StorageError, match=f"{uri}: access denied for these credentials"):
                storage.local_path(uri, tmp_path / "cache", progress=False)
        assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    finally:
        proc.kill()


def test_checkpoints_outlive_the_node(s3, shared, tmp_path):
    """Run A uploads every committed checkpoint; its step-4 upload is then made partial. Run B starts on an empty
    workdir, resumes from remote step 2 (the newest complete one) and reproduces A's losses bit for bit."""
    client, bucket = s3
    remote = f"s3://{bucket}/runs/a"
    steps = {"train.num_steps": 4, "checkpoint.every_steps": 2, "checkpoint.keep": 3, "storage.remote_workdir": remote}
    run("baseline", shared, tmp_path / "node1", **steps)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/a/")["Contents"]}
    for expected in ("checkpoints/2/_COMPLETE", "checkpoints/4/_COMPLETE", "final/model_config.json", "metrics.jsonl"):
        assert f"runs/a/{expected}" in keys, expected
    client.delete_object(Bucket=bucket, Key="runs/a/checkpoints/4/_COMPLETE")  # an upload that never finished
    with pytest.warns(UserWarning, match=r"ignoring incomplete remote checkpoints \[4\]"):
        run("baseline", shared, tmp_path / "node2", **steps)
    a, b = read_metrics(tmp_path / "node1"), read_metrics(tmp_path / "node2")
    assert [a[s]["loss"] for s in (1, 2, 3, 4)] == [b[s]["loss"] for s in (1, 2, 3, 4)]  # 1-2 came down with it
    assert json.loads((tmp_path / "node2" / "checkpoints" / "4" / "state" / "_METADATA").read_text())


def test_config_paths_on_s3_become_local_mirrors(s3, tmp_path):
    """``storage.localize``: a data file arrives with its index beside it; local paths stay as they are."""
    from wmtp_jax.run_config import DataConfig, ModelSection, RunConfig, StorageConfig

    client, bucket = s3
    for name in ("train.jsonl", "train.index.npz"):
        client.put_object(Bucket=bucket, Key=f"data/cc/{name}", Body=name.encode())
    run = RunConfig(
        storage=StorageConfig(cache_dir=str(tmp_path / "mirror"), endpoint_url=""),
        model=ModelSection(checkpoint=str(tmp_path / "local_model")),
        data=DataConfig(train=f"s3://{bucket}/data/cc/train.jsonl", validation=""),
    )
    local, keys = storage.localize(run)
    assert keys == ["data.train"] and run.data.train.startswith("s3://")  # a copy; the given config is unchanged
    train = local.data.train
    assert train.startswith(str(tmp_path / "mirror")) and open(train).read() == "train.jsonl"
    assert (tmp_path / "mirror").exists() and local.model.checkpoint == str(tmp_path / "local_model")
    assert open(train.replace("train.jsonl", "train.index.npz")).read() == "train.index.npz"
