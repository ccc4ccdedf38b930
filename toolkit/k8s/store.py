"""Where a pod finds the model repository: baked into the image, a volume claim, or a bucket.

`--model-store` takes `image` (the Dockerfile's image holds it at /models), `pvc:NAME` (a
PersistentVolumeClaim mounted read-only at /models), `s3://BUCKET/PATH` or `gs://BUCKET/PATH`
(Triton reads the bucket itself, with credentials from a Secret this module names but never
writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from toolkit.errors import DlkitError

MODELS_DIR = "/models"
GCS_KEY_DIR = "/var/secrets/google"
# The key KServe's storage initializer expects too, so one Secret serves both layouts.
GCS_KEY_FILE = "gcloud-application-credentials.json"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
STORE_HELP = "image, pvc:NAME, s3://BUCKET/PATH or gs://BUCKET/PATH"


@dataclass(frozen=True)
class ModelStore:
    """`kind` is image, pvc, s3 or gs; `location` the claim name or the bucket URI."""

    kind: str
    location: str = ""

    @property
    def cloud(self) -> bool:
        return self.kind in ("s3", "gs")

    @property
    def repository(self) -> str:
        """The `--model-repository` tritonserver gets."""
        return self.location if self.cloud else MODELS_DIR

    def __str__(self) -> str:
        return {"image": "image", "pvc": f"pvc:{self.location}"}.get(self.kind, self.location)


def parse_store(text: str) -> ModelStore:
    """The `--model-store` value as a ModelStore; raises DlkitError for anything else."""
    if text == "image":
        return ModelStore("image")
    if text.startswith("pvc:"):
        claim = text.removeprefix("pvc:")
        if not _CLAIM_NAME.match(claim):
            raise DlkitError(
                f"--model-store {text}: {claim!r} is not a valid PersistentVolumeClaim name "
                "(lower-case letters, digits, '-' and '.')"
            )
        return ModelStore("pvc", claim)
    scheme, sep, rest = text.partition("://")
    if sep and scheme in ("s3", "gs"):
        if not rest.split("/")[0]:
            raise DlkitError(f"--model-store {text} names no bucket; use {scheme}://BUCKET/PATH")
        return ModelStore(scheme, text)
    raise DlkitError(f"unknown --model-store {text!r}: use {STORE_HELP}")


def secret_name(name: str) -> str:
    """The Secret holding the bucket's credentials (created by the user, never written here)."""
    return f"{name}-model-store"


def store_env(store: ModelStore, name: str) -> list[dict]:
    """Environment variables that give tritonserver the bucket's credentials."""
    if store.kind == "s3":
        return [
            {
                "name": key,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": secret_name(name),
                        "key": key,
                        # Without a region, Triton's S3 client uses its default.
                        **({"optional": True} if key == "AWS_DEFAULT_REGION" else {}),
                    }
                },
            }
            for key in S3_SECRET_KEYS
        ]
    if store.kind == "gs":
        key_path = f"{GCS_KEY_DIR}/{GCS_KEY_FILE}"
        return [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": key_path}]
    return []


def store_volumes(store: ModelStore, name: str) -> tuple[list[dict], list[dict]]:
    """(pod volumes, container mounts) that bring the repository or its credentials in."""
    if store.kind == "pvc":
        claim = {"claimName": store.location, "readOnly": True}
        volume = {"name": "models", "persistentVolumeClaim": claim}
        return [volume], [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}]
    if store.kind == "gs":
        volume = {"name": "gcs-key", "secret": {"secretName": secret_name(name)}}
        return [volume], [{"name": "gcs-key", "mountPath": GCS_KEY_DIR, "readOnly": True}]
    return [], []


def storage_uri(store: ModelStore) -> str:
    """KServe's `storageUri` for the store (KServe downloads it before Triton starts)."""
    if store.kind == "image":
        raise DlkitError(
            "--kserve needs the repository where KServe can fetch it: use --model-store "
            "pvc:NAME, s3://BUCKET/PATH or gs://BUCKET/PATH"
        )
    return f"pvc://{store.location}" if store.kind == "pvc" else store.location
