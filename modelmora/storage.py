"""Large results in S3-compatible object storage (AWS S3, MinIO, ...), as the `[storage]` table of
modelmora.toml says: a result whose JSON is over the threshold is put under a key made of its
sha256, and the client gets a presigned GET URL instead of the bytes.

boto3 is imported on first use (the `storage` extra); credentials come from the table, else from
boto3's chain (AWS_ACCESS_KEY_ID, ~/.aws, an instance role). Any failure to store becomes an
UnavailableError with the reason: a result is never dropped silently.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from modelmora.errors import UnavailableError
from modelmora.manifest import StorageTable

CONTENT_TYPE = "application/json"
_HINT = "check the [storage] table of modelmora.toml, the bucket and the credentials"


@dataclass(frozen=True)
class StoredObject:
    """Where a stored result lies and until when its URL works."""

    url: str
    expires_at: datetime
    bytes: int
    sha256: str


def expiry(now: datetime, lifetime: float) -> datetime:
    """When a URL presigned at `now` for `lifetime` seconds stops working (UTC, whole seconds)."""
    return now.astimezone(timezone.utc).replace(microsecond=0) + timedelta(seconds=int(lifetime))


def object_key(prefix: str, data: bytes, suffix: str = ".json") -> tuple[str, str]:
    """The object's key (content-addressed: the same result is stored once) and its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix}{digest}{suffix}", digest


class Storage:
    """A bucket that takes results and hands out presigned URLs; thread-safe, blocking calls."""

    def __init__(self, table: StorageTable) -> None:
        self.table = table
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def threshold(self) -> int:
        return self.table.threshold

    def put(
        self, data: bytes, content_type: str = CONTENT_TYPE, suffix: str = ".json"
    ) -> StoredObject:
        """Store `data` and presign a GET of it; UnavailableError says why it could not be."""
        key, digest = object_key(self.table.prefix, data, suffix)
        where = f"s3://{self.table.bucket}/{key}"
        try:
            client = self.client()
            client.put_object(
                Bucket=self.table.bucket, Key=key, Body=data, ContentType=content_type
            )
            now = datetime.now(timezone.utc)
            url = client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.table.bucket, "Key": key},
                ExpiresIn=int(self.table.expires),
            )
        except Exception as error:  # botocore's errors: endpoint down, no bucket, refused
            raise UnavailableError(
                f"object storage: could not store the result at {where}: {_reason(error)}", _HINT
            ) from error
        return StoredObject(url, expiry(now, self.table.expires), len(data), digest)

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _make_client(self.table)
            return self._client


def _make_client(table: StorageTable) -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]
    except ImportError:
        raise UnavailableError(
            "object storage needs boto3", "pip install 'modelmora[storage]'"
        ) from None
    config = Config(
        connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"}
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=table.endpoint_url,
        region_name=table.region,
        aws_access_key_id=table.access_key_id,
        aws_secret_access_key=table.secret_access_key,
        config=config,
    )


def _reason(error: Exception) -> str:
    """botocore's message, which names the cause (NoSuchBucket, InvalidAccessKeyId, a URL)."""
    return str(error) or type(error).__name__
