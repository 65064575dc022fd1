"""A console a person can read: stage lines with elapsed time and ETA, progress lines, and
library noise silenced at its source (``--verbose`` brings it back).

Noise is silenced where it is made: logger levels (FAISS's loader, DeepSpeed, Ray, MLflow,
vLLM, transformers), environment variables the libraries read at import, and known warnings
filtered by message. Ray workers get the same treatment through ``worker_setup_hook`` (Ray's
``worker_process_setup_hook``), so lines from actors and Ray Train workers stay quiet too.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

log = logging.getLogger("afmrl")

VERBOSE_ENV = "AFMRL_VERBOSE"

# Logger -> level kept when quiet. FAISS's loader logs its AVX probing in every process.
QUIET_LOGGERS = {
    "faiss.loader": logging.ERROR, "faiss": logging.WARNING, "DeepSpeed": logging.ERROR,
    "deepspeed": logging.ERROR, "torch.distributed": logging.ERROR, "ray": logging.ERROR,
    "ray.data": logging.ERROR, "ray.train": logging.ERROR, "ray.serve": logging.ERROR,
    "ray.tune": logging.ERROR, "mlflow": logging.ERROR, "alembic": logging.WARNING,
    "vllm": logging.ERROR, "transformers": logging.ERROR, "urllib3": logging.WARNING,
    "httpx": logging.WARNING, "filelock": logging.WARNING, "xgrammar": logging.ERROR,
    "datasets": logging.ERROR, "accelerate": logging.ERROR, "trl": logging.ERROR,
    "uvicorn": logging.WARNING, "uvicorn.access": logging.WARNING, "fastapi": logging.WARNING,
    "torch._dynamo": logging.ERROR, "sentence_transformers": logging.ERROR,
    "torch": logging.ERROR,  # e.g. "Triton not available" in every process
    "matplotlib": logging.WARNING,  # "generated new fontManager" when the run report draws
}

# Environment the libraries read when they start (inherited by a local Ray cluster's workers).
QUIET_ENV = {
    "RAY_DEDUP_LOGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "VLLM_CONFIGURE_LOGGING": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "GLOG_minloglevel": "2",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Ray Data configures its own logger when imported (level DEBUG, console INFO): on a pipe
    # it logs every dataset's plan and a progress table every 10 s. Its level setting wins.
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # C++ core-worker error lines, e.g. Ray Train's PreemptionWatcher one and the driver's about
    # Ray Data's actors. Each process that reads it announces so in one INFO line first: the
    # driver's own is printed before any Python hook can act (one line per job); the workers'
    # are dropped from Ray's log stream (``drop_streamed_noise``).
    "RAY_BACKEND_LOG_LEVEL": "fatal",
    "TORCH_CPP_LOG_LEVEL": "ERROR",    # C++ warnings such as "NUMA binding: Using MEMBIND"
    # torch resets its loggers' levels when it is imported (after a worker's setup hook ran), so
    # "Triton not available" in every vLLM actor is only silenced through torch's own setting.
    "TORCH_LOGS": "-torch",
}
# Environment every run gets, verbose or not: it fixes output rather than silencing it. Ray
# Train workers replace ``print`` with one that logs each line and, when anything has wrapped
# sys.stdout, prints it as well: every progress line reached the console twice, and output a
# library captures (dill disassembles functions through ``print`` while `datasets` fingerprints
# TRL's data) leaked to it. Workers keep the built-in ``print``.
OUTPUT_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# Only in Ray workers: their output reaches the console line by line, so a bar redraws rarely.
WORKER_ENV = {"TQDM_MININTERVAL": "15"}
# Lines Ray streams from its processes that no setting turns off: Ray's log-level announcement,
# DeepSpeed's unconditional print in every training worker as it loads its CPU all-reduce op, and
# Serve's shutdown retrying a task on the controller it has just killed.
STREAM_NOISE = ("Set ray log level from environment variable",
                "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
                "ServeController.graceful_shutdown failed")

# Known warnings, filtered by message (regular expressions matched at the message start).
QUIET_WARNINGS = (
    r".*PreemptionWatcher", r".*scheduler", r".*deprecat", r".*Deprecat", r".*TypedStorage",
    r".*torch\.distributed", r".*pkg_resources", r".*No device id is provided",
    r".*`torch_dtype` is deprecated", r".*Using a slow image processor", r".*tensorboard",
    r".*Filesystem tracking backend", r".*The default value of", r".*is not a valid",
    r".*Passing `", r".*find_unused_parameters", r".*expandable_segments", r".*barrier\(\)",
    r"TRL currently supports vLLM versions",  # stack.md pins vllm 0.32, tested with TRL 1.16
)

# What a noise line looks like on the console (the console test checks none gets through).
NOISE_MARKERS = (
    "Could not load library with AVX", "Loading faiss with", "Successfully loaded faiss",
    "PreemptionWatcher", "DeprecationWarning", "FutureWarning", "[WARNING] [real_accelerator",
    "Setting ds_accelerator", "[INFO] [", "Gracefully aborting", "Started a local Ray instance",
    "mlflow.store.db.utils", "Requesting resources:", "Setting up process group",
    "Triton not available", "NUMA binding", "core_worker.cc", *STREAM_NOISE,
    "Loading safetensors checkpoint shards", "TRL currently supports vLLM",
    "Running Dataset", "Execution plan of Dataset",
    "LOAD_GLOBAL",  # bytecode that dill's disassembly printed through Ray Train's print
    "generated new fontManager",
)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") == "1"


def quiet_libraries() -> None:
    """Silence the known noise in this process (no-op in verbose mode)."""
    if is_verbose():
        return
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        # Some libraries (DeepSpeed) reset their logger's level when imported: a filter stays.
        if not any(isinstance(f, _MinLevel) for f in logger.filters):
            logger.addFilter(_MinLevel(level))
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:  # transformers keeps its own verbosity and its sub-second loading bars
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - not installed / not importable: nothing to quiet
        pass


class _MinLevel(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def worker_setup_hook() -> None:
    """Ray's ``worker_process_setup_hook``: every worker process is as quiet as the driver."""
    quiet_libraries()


def setup_console(verbose: bool = False) -> None:
    """Logging for a job's driver: one short line per message; the noise silenced unless
    ``verbose``. Call before Ray starts, so a local cluster's workers inherit the environment."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    for key, value in {**OUTPUT_ENV, **({} if verbose else QUIET_ENV)}.items():
        os.environ.setdefault(key, value)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stderr)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("afmrl").setLevel(logging.INFO)
    quiet_libraries()


def ray_runtime_env() -> dict[str, Any]:
    """The job-level runtime_env of Ray's workers: ``OUTPUT_ENV`` always, and quiet unless
    verbose."""
    if is_verbose():
        return {"env_vars": dict(OUTPUT_ENV)}
    return {"worker_process_setup_hook": "afmrl.utils.console.worker_setup_hook",
            "env_vars": {VERBOSE_ENV: "0", **QUIET_ENV, **OUTPUT_ENV, **WORKER_ENV}}


def drop_streamed_noise() -> None:
    """Drop ``STREAM_NOISE`` lines from the worker output Ray streams to this driver's console
    (no-op when verbose). Ray has no public hook for that stream, so this wraps its printing
    handler, and the printer its error channel calls directly (a task retried on a killed actor,
    e.g. Serve's graceful_shutdown after Ctrl-C, arrives that way as a "(raylet)" line); if Ray's
    internals move, nothing is dropped and nothing breaks."""
    if is_verbose():
        return
    try:
        import ray._private.worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    with dispatcher._lock:
        dispatcher.handlers = [
            (name, _dropping_noise(handler) if name == "ray_print_logs" else handler)
            for name, handler in dispatcher.handlers]
    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = _dropping_noise(ray_worker.print_to_stdstream)


def _dropping_noise(handler: Any) -> Any:
    if getattr(handler, "drops_noise", False):
        return handler

    def emit(batch: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        lines = [line for line in batch.get("lines", [])
                 if not any(marker in line for marker in STREAM_NOISE)]
        if lines:
            handler({**batch, "lines": lines}, *args, **kwargs)

    emit.drops_noise = True  # type: ignore[attr-defined]
    return emit


def ray_train_logging():
    """Ray Train's ``RunConfig(logging_config=...)``: its controller and workers log warnings
    and errors only (resource requests, worker-group start-up lines), all with --verbose."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if is_verbose() else "WARNING")


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes \
        else f"{secs}s"


class StageClock:
    """Stage start/end lines with elapsed time and the ETA of the stages still to run.

    ``estimates`` maps a stage to its expected seconds (measured on this machine for the
    profile); stages that finish update the ETA with real timings.
    """

    def __init__(self, stages: Sequence[str], estimates: dict[str, float] | None = None,
                 emit: Callable[[str], None] | None = None):
        self.stages = list(stages)
        self.estimates = dict(estimates or {})
        self.started = time.monotonic()
        self.emit = emit or log.info
        self._stage_started = 0.0

    def _eta(self, after: int) -> str:
        remaining = [self.estimates.get(s) for s in self.stages[after:]]
        if not remaining:
            return "nothing left"
        if any(r is None for r in remaining):
            return "ETA unknown"
        return f"ETA {format_seconds(sum(remaining))} for the remaining stages"

    def start(self, stage: str) -> None:
        number = self.stages.index(stage) + 1
        self._stage_started = time.monotonic()
        guess = self.estimates.get(stage)
        expect = f" (expect ~{format_seconds(guess)})" if guess else ""
        self.emit(f"[{number}/{len(self.stages)}] {stage} started{expect}; "
                  f"elapsed {format_seconds(time.monotonic() - self.started)}")

    def skip(self, stage: str) -> None:
        number = self.stages.index(stage) + 1
        self.estimates[stage] = 0.0
        self.emit(f"[{number}/{len(self.stages)}] {stage}: done earlier, skipped")

    def end(self, stage: str) -> float:
        number = self.stages.index(stage) + 1
        seconds = time.monotonic() - self._stage_started
        self.estimates[stage] = seconds
        self.emit(f"[{number}/{len(self.stages)}] {stage} finished in {format_seconds(seconds)}; "
                  f"elapsed {format_seconds(time.monotonic() - self.started)}; "
                  f"{self._eta(number)}")
        return seconds


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool = False) -> Any:
    """A tqdm bar on stderr, redrawn at most every 2 s (log-friendly when piped)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=2.0,
                disable=disable, file=sys.stderr, dynamic_ncols=True)


class TrainProgress:
    """A training loop's progress line (step, loss, samples/s, ETA), at most every
    ``every_s`` seconds, printed by rank 0 (Ray forwards worker output to the driver)."""

    def __init__(self, name: str, total_steps: int, first_step: int, world_size: int,
                 every_s: float = 10.0):
        self.name, self.total, self.world = name, max(total_steps, 1), world_size
        self.first_step, self.every_s = first_step, every_s
        self.started = self.last = time.monotonic()
        self.samples = 0

    def update(self, epoch: int, epochs: int, step: int, losses: Sequence[float],
               batch_size: int) -> None:
        self.samples += batch_size * self.world
        now = time.monotonic()
        if now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        elapsed = now - self.started
        done = max(step - self.first_step, 1)
        eta = (self.total - step) * elapsed / done
        recent = losses[-10:]
        loss = sum(recent) / max(len(recent), 1)
        print(f"{self.name}: epoch {epoch + 1}/{epochs} step {step}/{self.total} "
              f"({100 * step / self.total:.0f}%) loss {loss:.4f} "
              f"{self.samples / max(elapsed, 1e-9):.1f} samples/s ETA {format_seconds(eta)}",
              flush=True)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A short aligned text table of metric rows (floats to 3 decimals)."""
    if not rows:
        return "(no results)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def metrics_table(metrics: dict[str, float], columns: Sequence[str] = (
        "recall_at_1", "recall_at_5", "recall_at_10", "map_at_10",
        "within_group/recall_at_1")) -> str:
    """Eval metrics keyed '<benchmark>/<metric>' as a short table (a row per benchmark), after
    the plain values (loss, throughput) on one line."""
    plain = {k: v for k, v in metrics.items() if "/" not in k}
    rows: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        benchmark, _, metric = key.partition("/")
        if metric in columns:
            rows.setdefault(benchmark, {"benchmark": benchmark})[metric] = float(value)
    line = "  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in plain.items())
    if not rows:
        return line
    present = [c for c in columns if any(c in r for r in rows.values())]
    table = format_table(list(rows.values()), ["benchmark", *present])
    return line + "\n" + "\n".join("  " + row for row in table.splitlines())


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) reached the driver: stop, save, clean up."""


def install_interrupt_handler() -> None:
    """Our own SIGINT/SIGTERM handler in the driver's main thread.

    Ray Train installs a handler of its own in the driver ("Received SIGINT. Gracefully
    aborting the training run") that swallows Ctrl-C once training is over; calling this after
    each stage puts ours back, so Ctrl-C always raises ``Interrupted`` where the driver is.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    _own_ray_train_sigint()


def _own_ray_train_sigint() -> None:
    """Ray Train's ``fit()`` registers a driver SIGINT handler that aborts the run and then
    exits with status 0 from wherever the driver is, or swallows the signal. Ours aborts the run
    the same way (its controller's ``abort``), then raises ``Interrupted``, so the job's cleanup
    runs and the exit status says it was interrupted."""
    try:
        import ray
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    except ImportError:
        return

    def register(trainer: Any, controller: Any) -> None:
        def handler(signum: int, frame: Any) -> None:
            log.info("interrupted: aborting the training run")
            try:
                ray.get(controller.abort.remote(), timeout=15)
            except Exception:  # noqa: BLE001 - the controller exits while aborting
                pass
            raise Interrupted(f"stopped by {signal.Signals(signum).name} during training")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    DataParallelTrainer._register_sigint_handler = register


def noise_lines(lines: Iterable[str], markers: Sequence[str] = NOISE_MARKERS) -> Iterator[str]:
    """The lines that contain a known noise marker (what the console test looks for). A
    ``STREAM_NOISE`` line counts only when Ray streamed it from a worker ("(raylet)" or
    "(name pid=N)" prefix): the driver's own is the one known line per job (see QUIET_ENV)."""
    for line in lines:
        hits = [m for m in markers if m in line]
        if hits and (any(m not in STREAM_NOISE for m in hits) or _streamed(line)):
            yield line


def _streamed(line: str) -> bool:
    return "(raylet)" in line or " pid=" in line
