"""What was registered is what is promoted and served: SHA-256 of every artefact file.

At registration the model's artefact folder is hashed file by file (``artifact_manifest``) and the
digest of the whole (``manifest_digest``) is recorded on the registry version; before a promotion
and before a model is served the version's artefacts are downloaded, hashed again and compared
(``compare``): a changed, missing or added file refuses, naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: Registry version tags: the digest over all files, and the per-file manifest (JSON, when it fits).
CHECKSUM_TAG = "plml.artifact_sha256"
MANIFEST_TAG = "plml.artifact_manifest"
#: "incomplete" from the version's creation until its checksum is recorded, then "complete": a version
#: an interrupted registration left is neither served nor promoted (a re-run of registered_model resumes it)
REGISTRATION_TAG = "plml.registration"
_TAG_LIMIT = 5000  # MLflow's model version tag value limit
_CHUNK = 1 << 20


class ArtifactIntegrityError(RuntimeError):
    """A registered model's artefacts are not the ones recorded at registration."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_manifest(root: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``, sorted (POSIX separators)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no artefact folder at {root}")
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_digest(manifest: dict[str, str]) -> str:
    """One SHA-256 over the sorted ``path<TAB>sha256`` lines: equal iff every file and name is."""
    lines = "".join(f"{path}\t{sha}\n" for path, sha in sorted(manifest.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def checksum_tags(manifest: dict[str, str]) -> dict[str, str]:
    """The tags recorded on a registry version; the manifest only when it fits in one tag."""
    tags = {CHECKSUM_TAG: manifest_digest(manifest)}
    compact = json.dumps({p: s[:16] for p, s in manifest.items()}, separators=(",", ":"), sort_keys=True)
    if len(compact) <= _TAG_LIMIT:
        tags[MANIFEST_TAG] = compact
    return tags


def compare(recorded_tags: dict[str, str], manifest: dict[str, str], what: str) -> None:
    """Raise ArtifactIntegrityError unless ``manifest`` has the recorded digest; name the files that
    differ when the per-file manifest was recorded."""
    expected = recorded_tags.get(CHECKSUM_TAG)
    if expected is None:
        raise ArtifactIntegrityError(f"{what} has no recorded artefact checksum ({CHECKSUM_TAG}): it was not registered "
                                     f"by plml's registered_model, or its registration did not finish")
    actual = manifest_digest(manifest)
    if actual == expected:
        return
    if not manifest:
        raise ArtifactIntegrityError(f"{what}: none of its artefact files is left in the artefact store (deleted?); "
                                     f"refusing to use it")
    detail = ""
    raw = recorded_tags.get(MANIFEST_TAG)
    if raw:
        recorded = json.loads(raw)
        changed = sorted(p for p in recorded if p in manifest and manifest[p][:16] != recorded[p])
        missing = sorted(p for p in recorded if p not in manifest)
        added = sorted(p for p in manifest if p not in recorded)
        parts = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                 for label, names in (("changed", changed), ("missing", missing), ("added", added)) if names]
        detail = "; " + "; ".join(parts) if parts else ""
    raise ArtifactIntegrityError(f"{what}: artefacts differ from those recorded at registration (SHA-256 {actual[:12]}... "
                                 f"!= recorded {expected[:12]}...){detail}; refusing to use it")
