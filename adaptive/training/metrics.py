"""Where metrics go: one `Writer` interface, with JSONL (always), console progress and wandb.

`DIR/metrics.jsonl` is the source of truth that tests and reports read: one JSON object a line
with `step`, `split` (the phase that wrote it: "train" or "eval") and namespaced keys
(`train/loss`, `eval/accuracy`, ...); an eval line names the data split it scored in
`eval/split` ("validation" unless the config says otherwise). Wall-clock figures live under
`perf/`, the only keys that differ between two runs of the same config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Protocol

from adaptive.config_checks import ConfigError
from adaptive.workdir.runinfo import WorkdirError, file_errors, set_aside, write_atomic

log = logging.getLogger(__name__)


class Writer(Protocol):
    def write(self, step: int, split: str, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """Appends to DIR/metrics.jsonl; on resume, drops lines past the restored step first.

    Those lines came from steps that the resumed run will compute again; keeping them would
    duplicate steps. A last line cut short by a kill is dropped too; a line before it that is not
    JSON (the file edited or damaged) is dropped with a warning, the file as it was set aside.
    """

    def __init__(self, path: str | Path, *, resume_step: int):
        self.path = Path(path)
        with file_errors(self.path):
            if self.path.exists():
                text = self.path.read_text(errors="replace")
                lines = text.splitlines()
                kept = [line for line in lines if _kept(line, resume_step)]
                cut = len(lines) if text.endswith("\n") else len(lines) - 1  # a kill cuts only a last line
                bad = [i + 1 for i, line in enumerate(lines[:cut]) if line.strip() and _row(line) is None]
                if bad:
                    aside = set_aside(self.path)
                    log.warning("%s line %s is not JSON (edited or damaged): dropped; the file as it was is %s",
                                self.path, ", ".join(map(str, bad)), aside)  # fmt: skip
                write_atomic(self.path, "".join(k + "\n" for k in kept))
            self._file = self.path.open("a")

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        with file_errors(self.path):
            self._file.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
            self._file.flush()

    def close(self) -> None:
        with file_errors(self.path):
            self._file.close()


def _row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _kept(line: str, resume_step: int) -> bool:
    row = _row(line)
    return row is not None and row.get("step", 0) <= resume_step


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a metrics file; a last line cut short (a run killed mid-write) is left out,
    as a resume drops it, while a bad line before the last is an error naming the file."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise WorkdirError(f"{path} line {i + 1} is not JSON; the file was edited or corrupted") from None
    return rows


class WandbWriter:
    """wandb, offline unless asked otherwise; it never asks for a key in offline mode.

    The run id is derived from the workdir so that a resumed run continues the same wandb run;
    the run is named after its workdir and grouped by its config's name, so a sweep's points
    (one config, a folder each) are told apart and shown together.
    """

    def __init__(self, workdir: Path, *, mode: str, project: str, group: str, config: dict):
        import wandb  # imported here: a run with wandb disabled should not pay for it

        self._mode = mode
        digest = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:10]
        run_id = self._run_id = "".join(c if c.isalnum() else "-" for c in workdir.name)[-50:] + "-" + digest
        try:
            self._run = wandb.init(
                project=project,
                name=workdir.name,
                group=group,
                dir=str(workdir),
                mode=mode,
                id=run_id,
                resume="allow",
                config=config,
                reinit="finish_previous",
                # its summary repeats the progress bar and eval lines; WANDB_SILENT=false brings it back
                settings=wandb.Settings(silent=os.environ.get("WANDB_SILENT", "true").lower() != "false"),
            )
        except wandb.errors.Error as e:  # online with no key, or no network: before any step is lost
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"logging.wandb={mode!r}: wandb could not start ({first}); "
                "run `wandb login` where there is network, or use --config.logging.wandb=offline"
            ) from None

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        import wandb

        self._run.log({name: wandb.Image(str(path)) for name, path in images.items()}, step=step)

    def close(self) -> None:
        where = getattr(self._run.settings, "sync_dir", None)
        url = None if self._mode == "offline" else self._run.url
        self._run.finish()
        if self._mode == "offline" and where:
            # each start of a resumed run writes a folder of its own, all under one run id
            pieces = sorted(Path(where).parent.glob(f"offline-run-*-{self._run_id}"))
            if len(pieces) > 1:
                every = Path(where).parent / f"offline-run-*-{self._run_id}"
                print(f"wandb: offline run in {len(pieces)} folders, one per process that logged to it (each start "
                      f"of training, each eval); `wandb sync {every}` uploads them all", file=sys.stderr)  # fmt: skip
            else:
                print(f"wandb: offline run in {where}; `wandb sync {where}` uploads it", file=sys.stderr)
        elif url:
            print(f"wandb: {url}", file=sys.stderr)


class ProgressBar:
    """A live bar with steps/s and ETA on stderr, showing the latest loss and eval accuracy."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            disable=not enabled,
            file=sys.stderr,
            smoothing=0.1,
            mininterval=0.1 if sys.stderr.isatty() else 30.0,  # \r-redrawn bars pile up in log files
        )
        self._shown: dict[str, str] = {}

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        for key in ("train/loss", "train/accuracy", "eval/accuracy"):
            if key in metrics:
                self._shown[key.replace("/", "_")] = f"{metrics[key]:.4g}"
        self._bar.set_postfix(self._shown, refresh=False)

    def close(self) -> None:
        self._bar.close()


class MultiWriter:
    def __init__(self, writers: list):
        self.writers = writers

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        for w in self.writers:
            w.write(step, split, metrics)

    def close(self) -> None:
        for w in reversed(self.writers):  # the progress bar first: a line printed at a close follows it
            w.close()
