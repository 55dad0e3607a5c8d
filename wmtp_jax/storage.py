"""Remote storage, local first: ``s3://`` paths are mirrored into a local cache, and finished directories are
uploaded. The rest of the project sees only local paths (``local_path``) and "upload this directory"
(``upload_dir``); boto3 does the transfers.

Credentials come only from the environment or the instance role (boto3's own chain: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / role). ``AWS_ENDPOINT_URL`` or ``storage.endpoint_url`` points at an
S3-compatible store (MinIO, Ceph, moto).

Mirror layout: ``{cache_dir}/{bucket}/{key}/{digest}/...`` where ``digest`` hashes the key and ETag of every
object under the URI. A changed object gives a new digest and is fetched again; an unchanged one is never
fetched twice. A download goes to a temporary directory that is renamed into place when complete, so an
interrupted download leaves nothing that looks complete.

Uploaded directories end with a ``_COMPLETE`` marker object written last; ``complete_steps`` ignores checkpoint
prefixes without it, with a warning, since they are uploads that did not finish.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

from wmtp_jax.files import atomic_path
from wmtp_jax.schema import get_path, replace_path

MARKER = "_COMPLETE"
SCHEME = "s3://"


class StorageError(RuntimeError):
    """A remote path that cannot be read or written; the message names the URL and the reason."""


def is_remote(path) -> bool:
    return str(path).startswith(SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; raises StorageError for anything else."""
    if not is_remote(uri) or not uri[len(SCHEME) :].split("/", 1)[0]:
        raise StorageError(f"{uri!r}: expected s3://bucket/key")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    return bucket, key.strip("/")


def _client(endpoint_url: str = ""):
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    session = boto3.session.Session()  # a fresh session: credentials as the environment has them now, thread-safe
    return session.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 3, "mode": "standard"}))


def _explain(uri: str, e: Exception) -> StorageError:
    """A boto3 / botocore failure as a StorageError naming ``uri`` and what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return StorageError(
            f"{uri}: no AWS credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an "
            "instance role)"
        )
    if isinstance(e, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach the S3 endpoint ({e}); check AWS_ENDPOINT_URL / storage.endpoint_url")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return StorageError(f"{uri}: bucket {split_uri(uri)[0]!r} does not exist")
        if code in ("404", "NoSuchKey"):
            return StorageError(f"{uri}: no such object")
        if code in ("403", "AccessDenied", "AllAccessDisabled"):
            return StorageError(f"{uri}: access denied for these credentials")
        return StorageError(f"{uri}: S3 error {code}: {e}")
    return StorageError(f"{uri}: {type(e).__name__}: {e}")


def _objects(s3, uri: str) -> list[tuple[str, str, int]]:
    """``(key, etag, size)`` of the object ``uri`` names, or of every object under it as a prefix."""
    bucket, key = split_uri(uri)
    if key:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            return [(key, head["ETag"], head["ContentLength"])]
        except Exception as e:
            from botocore.exceptions import ClientError

            if not (isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey")):
                raise
    prefix = f"{key}/" if key else ""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [(o["Key"], o["ETag"], o["Size"]) for o in page.get("Contents", [])]
    found = [o for o in found if not o[0].endswith(f"/{MARKER}")]
    if not found:
        raise StorageError(f"{uri}: no such object or prefix in bucket {bucket!r}")
    return found


def local_path(
    path: str | os.PathLike, cache_dir: str | os.PathLike, endpoint_url: str = "", progress: bool = True
) -> Path:
    """``path`` itself when it is local; for ``s3://bucket/key`` (an object or a prefix), its local mirror under
    ``cache_dir`` (see the module docstring), downloaded once with parallel multipart transfers.

    Raises:
      StorageError: missing bucket, key or prefix, no credentials, access denied, unreachable endpoint.
    """
    if not is_remote(path):
        return Path(path)
    uri = str(path).rstrip("/")
    bucket, key = split_uri(uri)
    try:
        s3 = _client(endpoint_url)
        objects = _objects(s3, uri)
    except StorageError:
        raise
    except Exception as e:
        raise _explain(uri, e) from None
    single = len(objects) == 1 and objects[0][0] == key
    digest = hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()[:16]
    root = Path(cache_dir) / bucket / (key or "_bucket") / digest
    result = root / Path(key).name if single else root
    if root.is_dir():
        return result
    try:
        _place(s3, bucket, _relative(objects, key, single), root, uri, progress)
    except Exception as e:
        raise _explain(uri, e) from None
    return result


def _place(s3, bucket: str, items: list[tuple[str, str, int]], dst: Path, uri: str, progress: bool) -> None:
    """Downloads ``items`` into a temporary sibling of ``dst`` and renames it to ``dst``, so an interrupted download
    leaves nothing that looks complete. If another process placed ``dst`` first, theirs is kept."""
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _download(s3, bucket, items, tmp, uri, progress)
        try:
            tmp.rename(dst)
        except OSError:
            if not dst.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _relative(objects, key: str, single: bool) -> list[tuple[str, str, int]]:
    """``(key, path relative to the mirror root, size)`` of each object."""
    start = len(key) + 1 if key else 0
    return [(k, Path(k).name if single else k[start:], n) for k, _, n in objects]


def download_dir(uri: str, dst: str | os.PathLike, endpoint_url: str = "", progress: bool = True) -> Path:
    """Downloads every object under the prefix ``uri`` into ``dst`` (created; written under a temporary name and
    renamed when complete). Raises StorageError naming the URL."""
    dst = Path(dst)
    bucket, key = split_uri(uri.rstrip("/"))
    try:
        s3 = _client(endpoint_url)
        _place(s3, bucket, _relative(_objects(s3, f"{SCHEME}{bucket}/{key}"), key, False), dst, uri, progress)
    except StorageError:
        raise
    except Exception as e:
        raise _explain(uri, e) from None
    return dst


def _download(s3, bucket: str, items: list[tuple[str, str, int]], dst: Path, uri: str, progress: bool) -> None:
    from boto3.s3.transfer import TransferConfig
    from tqdm.auto import tqdm

    config = TransferConfig(multipart_threshold=64 * 2**20, max_concurrency=8)
    bar = tqdm(total=sum(n for *_, n in items), unit="B", unit_scale=True, desc=f"mirror {uri}", disable=not progress)
    lock = threading.Lock()

    def advance(n):
        with lock:
            bar.update(n)

    def fetch(item):
        key, rel, _ = item
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target), Config=config, Callback=advance)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(fetch, items))
    bar.close()


def upload_dir(local_dir: str | os.PathLike, uri: str, endpoint_url: str = "") -> None:
    """Uploads every file under ``local_dir`` to the prefix ``uri``, then the ``_COMPLETE`` marker (last).
    Raises StorageError naming the URL."""
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_uri(uri)
    local_dir = Path(local_dir)
    config = TransferConfig(multipart_threshold=64 * 2**20, max_concurrency=8)
    try:
        s3 = _client(endpoint_url)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket, f"{key}/{path.relative_to(local_dir).as_posix()}", Config=config)
        s3.put_object(Bucket=bucket, Key=f"{key}/{MARKER}", Body=b"")
    except Exception as e:
        raise _explain(uri, e) from None


def upload_file(local_file: str | os.PathLike, uri: str, endpoint_url: str = "") -> None:
    bucket, key = split_uri(uri)
    try:
        _client(endpoint_url).upload_file(str(local_file), bucket, key)
    except Exception as e:
        raise _explain(uri, e) from None


def download_file(uri: str, dst: str | os.PathLike, endpoint_url: str = "") -> Path:
    """Downloads the object ``uri`` to ``dst`` (atomically). Raises StorageError naming the URL."""

    bucket, key = split_uri(uri)
    try:
        with atomic_path(dst) as tmp:
            _client(endpoint_url).download_file(bucket, key, str(tmp))
    except Exception as e:
        raise _explain(uri, e) from None
    return Path(dst)


def delete_prefix(uri: str, endpoint_url: str = "") -> None:
    """Deletes every object under the prefix ``uri`` (marker first, so a half-deleted copy is never complete)."""
    bucket, key = split_uri(uri)
    try:
        s3 = _client(endpoint_url)
        keys = [k for k, _, _ in _objects(s3, uri)]
        keys.sort(key=lambda k: not k.endswith(f"/{MARKER}"))
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})
    except StorageError:
        return
    except Exception as e:
        raise _explain(uri, e) from None


def complete_steps(uri: str, endpoint_url: str = "") -> list[int]:
    """The checkpoint steps under ``uri`` (``{uri}/{step}/...``) whose upload finished (``_COMPLETE`` present),
    oldest first; steps without the marker are skipped with a warning naming them."""
    bucket, key = split_uri(uri)
    try:
        s3 = _client(endpoint_url)
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/"):
            keys += [o["Key"][len(key) + 1 :] for o in page.get("Contents", [])]
    except Exception as e:
        raise _explain(uri, e) from None
    steps = {int(k.split("/", 1)[0]) for k in keys if k.split("/", 1)[0].isdigit()}
    complete = {int(k.split("/", 1)[0]) for k in keys if k.endswith(f"/{MARKER}") and k.split("/", 1)[0].isdigit()}
    partial = sorted(steps - complete)
    if partial:
        warnings.warn(f"{uri}: ignoring incomplete remote checkpoints {partial} (no {MARKER} marker)", stacklevel=2)
    return sorted(complete)


# config keys holding paths: model / checkpoint directories (mirrored as prefixes), data files (their directory is
# mirrored, so ``train.jsonl`` keeps its ``train.index.npz`` beside it) and single files
_DIRECTORY_KEYS = ("model.checkpoint", "model.init_from", "reference.checkpoint")
_DATA_KEYS = ("data.train", "data.validation", "weighting.rho1_reference_ce")
_FILE_KEYS = ("tokenizer",)


def localize(run) -> tuple[Any, list[str]]:
    """``(run config, mirrored keys)``: a copy of the typed run config ``run`` whose every ``s3://`` path is replaced
    by its local mirror (``storage.cache_dir``), and the keys it mirrored. Local paths are left as they are (local
    first); sections the run does not have are skipped. Raises StorageError naming the URL."""
    cache, endpoint = run.storage.cache_dir, run.storage.endpoint_url
    done = []
    for key in (*_DIRECTORY_KEYS, *_DATA_KEYS, *_FILE_KEYS):
        try:
            value = get_path(run, key)
        except AttributeError:  # a job without this section (eval has no data section)
            continue
        if not is_remote(value):
            continue
        if key in _DATA_KEYS:
            parent, _, name = str(value).rstrip("/").rpartition("/")
            local = local_path(parent, cache, endpoint) / name
        else:
            local = local_path(value, cache, endpoint)
        run = replace_path(run, key, str(local))
        done.append(key)
    return run, done
