"""`train_and_evaluate(cfg, workdir)`: the resumable training loop.

Running it again on the same workdir resumes from the newest checkpoint that restores (params,
optimizer, step, data position); randomness is derived from (seed, step), so a run killed at
any moment and rerun ends bitwise where an uninterrupted run ends. SIGTERM and SIGINT (Ctrl-C)
save and stop. An unusable newest checkpoint is set aside and its steps trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.budget import Budget
from adaptive.compute.lm_flops import lm_flops
from adaptive.inference.scoring import score_split
from adaptive.nn.models import build_model
from adaptive.training import lm_steps, parallel, run_folder, steps
from adaptive.training.metrics import JsonlWriter, MultiWriter, ProgressBar, WandbWriter, read_jsonl
from adaptive.training.optim import learning_rate_schedule, make_optimizer
from adaptive.workdir import runinfo
from adaptive.workdir.checkpoint import Checkpointer
from adaptive.workdir.config_file import with_run_cost_model

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); the message is one line."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived: a checkpoint was saved and the run stopped; rerun to resume."""

    def __init__(self, message: str, *, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)


def _check_routing_groups(cfg: config_lib.Config, input_shape: tuple[int, ...]) -> None:
    """Experts route tokens in `moe.num_groups` equal groups: refused up front when the train or
    eval batch's tokens do not divide (otherwise the first trace fails, after data preparation)."""
    if not cfg.moe.enabled:
        return
    per_example = math.prod(input_shape) if cfg.model.kind == "transformer" else 1  # tokens per example
    for key, rows in (("train.batch_size", cfg.train.batch_size), ("train.eval_batch_size", cfg.train.eval_batch_size)):
        if (rows * per_example) % cfg.moe.num_groups:
            raise config_lib.ConfigError(
                f"config key 'moe.num_groups' is {cfg.moe.num_groups}; it must divide the {rows * per_example} "
                f"tokens of a batch of {key}={rows}"
            )


def train_and_evaluate(cfg: config_lib.Config, workdir: str | Path) -> dict[str, float | str]:
    """Trains `cfg` in `workdir` (resuming if it holds a checkpoint); returns final eval metrics."""
    parallel.initialize(cfg.mesh)
    workdir, writer = Path(workdir).resolve(), parallel.is_writer()
    if writer:
        run_folder.refuse_a_folder_inside_a_run(workdir)
    with contextlib.ExitStack() as held:
        locked = writer and workdir.is_dir()
        if locked:  # a folder in use is said before the setup below (data, model, budget), not after it
            run_folder.refuse_a_folder_of_another_command(workdir)
            held.enter_context(runinfo.sole_trainer(workdir))
        mesh = parallel.make_mesh(cfg.mesh)
        parallel.check_batch(cfg.train.batch_size, mesh)
        parallel.check_moe(cfg.moe, mesh)
        spec = data.prepare(cfg.data)
        _check_routing_groups(cfg, spec.input_shape)
        model = build_model(cfg, spec)
        # refuses unreachable targets; a resumed run prices with the cost model it started with
        budget = Budget.from_config(with_run_cost_model(cfg, workdir), spec.input_shape, spec.num_classes)
        if budget is not None:
            budget.check_trainable(cfg)
        with runinfo.file_errors(workdir):  # a new run's folder only once its config is known good
            workdir.mkdir(parents=True, exist_ok=True)
        if writer and not locked:  # another new trainer of this folder may have made it meanwhile
            run_folder.refuse_a_folder_of_another_command(workdir)
            held.enter_context(runinfo.sole_trainer(workdir))
        if writer:
            run_folder.write_or_check_config(cfg, workdir)
            run_folder.keep_cost_model(cfg, workdir)
        return _train(cfg, model, spec, budget, mesh, workdir)


def _train(cfg: config_lib.Config, model, spec: data.DatasetSpec, budget: Budget | None, mesh, workdir: Path) -> dict:
    state, loop = _build_loop(cfg, model, spec, budget, mesh)
    rows = parallel.host_rows(cfg.train.batch_size) if jax.process_count() > 1 else None
    batches = data.train_iterator(cfg.data, cfg.train.batch_size, seed=cfg.seed, rows=rows)
    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints, config=run_folder.as_saved(cfg))
    writer = None
    try:
        # Training sets an unusable newest step aside, so that it trains and saves that step again.
        restored = ckpt.restore_latest(state, set_aside=True)
        start = 0
        if restored is not None:
            start, state, data_state = restored
            batches.set_state(data_state)
            log.info("resuming %s from step %d", workdir, start)
        if parallel.is_writer():
            runinfo.record_start(workdir, seed=cfg.seed, resumed_from=restored and start)
        writer = _open_writers(cfg, workdir, start)
        # a finished run whose final eval line was lost (a cut metrics.jsonl) logs it again
        lost = start >= cfg.train.steps and parallel.is_writer() and not _final_eval_logged(workdir, cfg.train.steps)
        with _StopSignals() as stop:
            final = loop.run(state, batches, start, ckpt, writer, stop, log_final=lost)
    except BaseException:
        for closable in (writer, ckpt):  # the error on its way says what went wrong, not these
            with contextlib.suppress(Exception):
                if closable is not None:
                    closable.close()
        raise
    try:
        writer.close()
    finally:
        ckpt.close()
    return final


def _build_loop(cfg: config_lib.Config, model, spec: data.DatasetSpec, budget: Budget | None, mesh):
    """The fresh train state (laid out on the mesh) and the loop with its jitted steps."""
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    loss_fn = lm_steps.loss_fn_of(cfg, spec, graphdef, budget)
    eval_step = steps.make_eval_step(graphdef, spec.max_difficulty)
    if spec.sequence:  # the language model's sums, with the FLOPs each token spent
        batch, exits = cfg.train.eval_batch_size, cfg.lm.exits
        tokens = lm_flops(cfg, spec.input_shape[0], spec.num_classes, batch=batch, exiting=exits)
        eval_step = lm_steps.make_eval_step(
            graphdef, spec.max_difficulty, cfg.lm.exit_threshold if exits else None, tokens
        )
    state = steps.init_state(
        graphdef, nnx.to_pure_dict(params), tx, cfg.halting, spec.input_shape, budget, cfg.train.batch_size, loss_fn
    )
    step_fn = steps.make_train_step(graphdef, tx, cfg.halting, budget, cfg.seed, loss_fn)
    place = lambda batch: batch  # noqa: E731
    if parallel.is_trivial(mesh):
        train_step = jax.jit(step_fn, donate_argnums=0)
    else:  # the state laid out on the mesh once; batches assembled from each host's rows
        shardings = parallel.state_shardings(state, mesh)
        state = jax.device_put(state, shardings)
        batch_in = parallel.batch_sharding(mesh)
        train_step = jax.jit(step_fn, in_shardings=(shardings, batch_in), out_shardings=shardings, donate_argnums=0)
        place = lambda batch: parallel.global_batch(batch, mesh)  # noqa: E731
    # With experts sharded, both steps trace under the mesh: their MoE layers go all-to-all.
    loop = _Loop(
        cfg=cfg,
        train_step=parallel.with_mesh(train_step, mesh),
        eval_step=parallel.with_mesh(jax.jit(eval_step), mesh),
        place=place,
        lr_at=learning_rate_schedule(cfg.optim, cfg.train.steps),
        budget=budget,
    )
    return state, loop


def _final_eval_logged(workdir: Path, steps: int) -> bool:
    """Whether metrics.jsonl (as the writer left it on opening: whole lines up to the restored
    step) holds an eval of step `steps`."""
    return any(r["split"] == "eval" and r["step"] >= steps for r in read_jsonl(workdir / "metrics.jsonl"))


def _open_writers(cfg: config_lib.Config, workdir: Path, start: int) -> MultiWriter:
    writing = parallel.is_writer()
    writers: list = [JsonlWriter(workdir / "metrics.jsonl", resume_step=start)] if writing else []
    if cfg.logging.wandb != "disabled" and writing:
        writers.append(
            WandbWriter(
                workdir,
                mode=cfg.logging.wandb,
                project=cfg.logging.wandb_project,
                group=cfg.name,
                config=config_lib.to_dict(cfg),
            )
        )
    bar = ProgressBar(cfg.train.steps, start, enabled=cfg.logging.progress and writing)
    return MultiWriter(writers + [bar])  # the bar last: the loop advances it every step


class _StopSignals:
    """Records SIGTERM and SIGINT; the loop then saves at the end of the step and stops. After a
    first Ctrl-C a second one kills at once (orbax's save is atomic, so that loses no checkpoint)."""

    def __init__(self):
        self.signum: int | None = None

    def _record(self, signum, frame) -> None:
        self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    def __enter__(self) -> _StopSignals:
        self._previous = {s: signal.signal(s, self._record) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclasses.dataclass
class _Loop:
    cfg: config_lib.Config
    train_step: Callable
    eval_step: Callable
    place: Callable
    lr_at: Callable
    budget: Budget | None

    def run(
        self, state, batches, start: int, ckpt: Checkpointer, writer, stop: _StopSignals, log_final: bool = False
    ) -> dict[str, float | str]:
        """Steps `start + 1` to the end: logs, evals and checkpoints as configured; on a signal,
        saves at the current step and raises Interrupted. A run already at its last step is
        only evaluated (`log_final`: and its eval logged, its line having been lost)."""
        train, bar = self.cfg.train, writer.writers[-1]  # the progress bar comes last
        final: dict[str, float | str] = {}
        t_window, steps_in_window = time.perf_counter(), 0
        for step in range(start + 1, train.steps + 1):
            state = self.train_step(state, self.place(next(batches)))
            steps_in_window += 1
            bar.advance()
            last = step == train.steps
            if step % train.log_every == 0 or last:
                metrics, state = _train_metrics(state, self.lr_at)
                metrics["perf/steps_per_sec"] = steps_in_window / max(time.perf_counter() - t_window, 1e-9)
                writer.write(step, "train", metrics)
                t_window, steps_in_window = time.perf_counter(), 0
            paused = time.perf_counter()
            if step % train.checkpoint_every == 0 or last or stop.signum or step % train.log_every == 0:
                _check_streak(state, train.max_nonfinite_in_a_row, step, ckpt)
            if step % train.eval_every == 0 or last:
                final = self._evaluate(state)
                writer.write(step, "eval", final)
            saved = step % train.checkpoint_every == 0 or last or stop.signum  # a signal during the eval too
            if saved:
                _save(state, step, ckpt, batches, train.max_nonfinite_in_a_row)
            t_window += time.perf_counter() - paused  # evals and checkpoints are not training steps
            if stop.signum:
                if not saved:  # it came after the save was decided
                    _save(state, step, ckpt, batches, train.max_nonfinite_in_a_row)
                name = signal.Signals(stop.signum).name
                raise Interrupted(
                    f"stopped by {name} at step {step}; checkpoint saved in {ckpt.directory}; "
                    "rerun the same command to resume",
                    signum=stop.signum,
                )
        if start >= train.steps:  # nothing left to train: report the finished run's eval
            final = self._evaluate(state)
            if log_final:
                writer.write(train.steps, "eval", final)
        return final

    def _evaluate(self, state: dict) -> dict[str, float | str]:
        """The periodic eval: scores data.eval_split (validation unless a config says otherwise,
        since these evals are what runs are compared and chosen on) and names it in `eval/split`."""
        split = self.cfg.data.eval_split
        metrics = score_split(self.eval_step, state["params"], self.cfg, split, requests=self.budget)
        return {**metrics, "eval/split": split}


def _train_metrics(state: dict, lr_at) -> tuple[dict, dict]:
    """Means of the train metrics since the last log (read from the state), then reset them.

    Keys already namespaced by the model (`moe/...`) keep their name; the rest get `train/`.
    Per-expert figures (moe/expert_usage) are lists.
    """
    host = jax.device_get({k: state[k] for k in ("metric_sums", "metric_count", "skipped_steps", "step")})
    count = int(host["metric_count"])
    metrics = {}
    for key, total in host["metric_sums"].items() if count else ():  # every step skipped: no means, not zeros
        mean = np.asarray(total) / count
        metrics[key if "/" in key else f"train/{key}"] = mean.tolist() if mean.ndim else float(mean)
    metrics["train/skipped_steps"] = int(host["skipped_steps"])
    applied = int(host["step"]) - int(host["skipped_steps"])  # skipped steps do not advance optax
    metrics["train/learning_rate"] = float(lr_at(max(applied - 1, 0)))  # the last update's rate
    return metrics, steps.reset_metric_sums(state)


def _save(state: dict, step: int, ckpt: Checkpointer, batches, limit: int) -> None:
    """Saves `step`, unless its state is past the run's streak of non-finite steps."""
    _check_streak(state, limit, step, ckpt)
    ckpt.save(step, state, batches.get_state())


def _check_streak(state: dict, limit: int, step: int, ckpt: Checkpointer) -> None:
    worst = int(state["worst_streak"])
    if worst >= limit:
        last_good = ckpt.latest_step()
        raise TrainingError(
            f"{worst} non-finite steps in a row by step {step} (limit "
            f"train.max_nonfinite_in_a_row={limit}); last good checkpoint: "
            f"{'step ' + str(last_good) if last_good is not None else 'none'} in {ckpt.directory}"
        )
