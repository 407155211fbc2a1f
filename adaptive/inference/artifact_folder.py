"""Where `adaptive export` may write: it never deletes what it did not write.

ART must be absent, an empty folder, or (with `force`) a previous artifact holding nothing but its
meta.json and the blobs it names; ART may not be the run's workdir, inside it, or above it. It is
staged in ART.partial (removed only when it is a previous partial export) and renamed into place;
a previous artifact it replaces is renamed aside to ART.replaced first and deleted only once the
new one is in place, so a crash at any moment leaves a whole artifact under one of those names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adaptive.inference.artifact_meta import (
    BLOB,
    LM_FORMAT,
    META,
    ArtifactError,
    check_sealed,
    parse_meta,
    validate,
    validate_lm_files,
)

# Marks ART.partial as this tool's staging folder: only such a folder is ever removed.
PARTIAL_MARK = ".adaptive-export-partial"
_BLOB_NAME = re.compile(
    r"(model(-k[0-9]+|-b[0-9]+)?|(point-[a-z0-9]+-p[0-9]+-)?slot-prefill|(point-[a-z0-9]+-p[0-9]+-)?slot-step"
    r"|point-[a-z0-9]+-p[0-9]+)\.jaxexport"
)


def staged_paths(out) -> tuple[Path, Path]:
    """(ART, ART.partial) for `--out ART`; "." and ".." stand for the folders they name."""
    out = Path(out)
    if out.name in ("", ".."):
        out = out.resolve()
    if not out.name:
        raise ArtifactError(f"--out {out} names no folder to hold the artifact; nothing was written")
    return out, out.with_name(out.name + ".partial")


def check_targets(out: Path, staging: Path, workdir: Path, force: bool) -> None:
    """Before the slow part of an export: `out` may be written (`check_out`), and ART.partial and
    ART.replaced, left by an export stopped part-way, are this tool's and removed (anything
    else of those names is refused: nothing of a user's is deleted)."""
    check_out(out, workdir, force)
    check_staging(staging)
    check_staging(_aside(out))


def _aside(out: Path) -> Path:
    return out.with_name(out.name + ".replaced")


def write_staging(staging: Path, blobs: dict[str, bytes], meta: dict) -> None:
    """The export's files written into `staging`, marked partial until `publish`; an OS error
    (no permission, a full disk) is one line, and the mark keeps the folder removable."""
    check_staging(staging)  # again: the folder may have appeared during the export
    try:
        staging.mkdir(parents=True, exist_ok=True)
        (staging / PARTIAL_MARK).touch()
        for name, data in blobs.items():
            (staging / name).write_bytes(data)
        (staging / META).write_text(json.dumps(meta, indent=1) + "\n")
    except OSError as e:
        raise ArtifactError(f"cannot write the artifact into {staging} ({e.strerror}); nothing was replaced") from None


def publish(staging: Path, out: Path, workdir: Path, force: bool) -> None:
    """The verified export at `staging` moved to `out`, a previous artifact there renamed aside
    first and deleted after: no moment leaves neither whole."""
    (staging / PARTIAL_MARK).unlink()
    check_out(out, workdir, force)  # again: the folder may have changed during the export
    aside = _aside(out)
    check_staging(aside)  # again, as for ART
    try:
        if out.is_dir():
            out.rename(aside)  # empty, or a previous artifact (force): nothing of a user's
        staging.rename(out)
        if aside.is_dir():
            remove_folder(aside)
    except OSError as e:  # each of the three steps leaves every artifact whole somewhere
        raise ArtifactError(
            f"cannot finish replacing {out} ({e.strerror or e}): the verified new artifact is at {out} or "
            f"{staging}, a previous one, if any, at {out} or {aside}; the next export tidies them"
        ) from None


def check_out(out: Path, workdir: Path, force: bool) -> None:
    """Refuses an `out` whose replacement would delete what this tool did not write."""
    here, run = out.resolve(), Path(workdir).resolve()
    if here == run or run in here.parents:
        raise ArtifactError(f"--out {out} is inside the run's workdir {workdir}; write the artifact elsewhere")
    if here in run.parents:
        raise ArtifactError(f"--out {out} contains the run's workdir {workdir}; write the artifact elsewhere")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ArtifactError(f"--out {out} exists and is a file or a link, not a folder; nothing was written")
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        meta = _valid_meta(out)
        check_sealed(meta, out)
    except ArtifactError:
        raise ArtifactError(
            f"--out {out} is a folder but not an artifact of `adaptive export` (no valid {META}); nothing was written"
        ) from None
    blobs = [*meta.get("expert_variants", {}).values(), *meta.get("batch_variants", {}).values()]
    blobs += [meta["slots"][name] for name in ("prefill", "step") if name in meta.get("slots", {})]
    points = [entry for entry in meta.get("operating_points", []) if "file" in entry]
    blobs += points + [p["slots"][name] for p in points if "slots" in p for name in ("prefill", "step")]
    named = {META, BLOB, *(entry["file"] for entry in blobs)}
    for entry in sorted(out.iterdir()):
        if entry.name not in named or entry.is_symlink() or not entry.is_file():
            raise ArtifactError(
                f"--out {out} holds {entry.name}, which is not part of an artifact; nothing was written (move it away)"
            )
    if not force:
        raise ArtifactError(f"--out {out} is an artifact already; pass --force to replace it")


def check_staging(staging: Path) -> None:
    """Removes a previous partial export (or an aside copy) at `staging`; refuses anything else
    of that name, and says so in one line if it cannot be removed."""
    if not staging.exists() and not staging.is_symlink():
        return
    ours = staging.is_dir() and not staging.is_symlink()
    entries = list(staging.iterdir()) if ours else []
    names = {e.name for e in entries}
    ours = ours and all(
        (e.name in (META, PARTIAL_MARK) or _BLOB_NAME.fullmatch(e.name)) and e.is_file() and not e.is_symlink()
        for e in entries
    )
    if not ours or (entries and PARTIAL_MARK not in names and not _is_artifact(staging)):
        raise ArtifactError(f"{staging} exists and is not a partial export of `adaptive export`; move it away first")
    try:
        remove_folder(staging)
    except OSError as e:
        raise ArtifactError(f"cannot remove {staging}, a previous partial export ({e.strerror or e})") from None


def _is_artifact(folder: Path) -> bool:
    """A folder with a valid meta.json (an export stopped between verifying and renaming)."""
    try:
        _valid_meta(folder)
    except ArtifactError:
        return False
    return True


def _valid_meta(folder: Path) -> dict:
    """folder/meta.json parsed and validated: a classifier's against the schema, a language
    model's operating points (the rest of it is checked by its loader)."""
    meta = parse_meta(folder)
    if isinstance(meta, dict) and meta.get("format") == LM_FORMAT:
        validate_lm_files(meta, f"{folder}/{META}")
    else:
        validate(meta, f"{folder}/{META}")
    return meta


def remove_folder(folder: Path) -> None:
    """Deletes a folder checked to hold only plain files this tool writes (never rmtree)."""
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()
