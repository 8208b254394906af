"""The workers' start and stop: which runner takes which kind of work, and taking over unheld work.

``register`` (at app creation) gives the work queue one runner per kind of work.
``start`` (before the service answers) warms TensorFlow (and Beam) in the
background, closes what a crash left half done (``recovery``), then takes over
work nobody holds: each kind's module lists its unfinished work (``pending``) and
redoes what this replica wins the lease of (``adopt``). The same pass repeats
every third of a lease, so work a dead replica held is taken over once its lease
expires. ``stop`` (a graceful stop) gives back the attempts and leases of work in
flight, so only crashes count towards a job's attempt limit and other replicas
take the work over at once.
"""

from __future__ import annotations

import logging
import threading

from include.local_platform.context import Context
from include.local_platform.resources import artifacts
from include.local_platform.serving import saved_model
from include.local_platform.workers import (
    batch,
    deployment,
    recovery,
    training,
    vertex_batch,
    vertex_deployment,
    vertex_training,
)

log = logging.getLogger(__name__)
#: Each kind of work: (its unfinished work's names, redo one this replica just took).
ADOPTERS = {
    "deployment": (deployment.pending, deployment.adopt),
    "batch": (batch.pending, batch.adopt),
    "training": (training.pending, training.adopt),
    "vertex_deployment": (vertex_deployment.pending, vertex_deployment.adopt),
    "vertex_batch": (vertex_batch.pending, vertex_batch.adopt),
    "vertex_training": (vertex_training.pending, vertex_training.adopt),
}


def register(ctx: Context) -> None:
    ctx.work.register("deployment", lambda name: deployment.submit(ctx, name))
    ctx.work.register("batch", lambda name: batch.submit(ctx, name))
    ctx.work.register("training", lambda name: training.submit(ctx, name))
    ctx.work.register("vertex_deployment", lambda name: vertex_deployment.submit(ctx, name))
    ctx.work.register("vertex_batch", lambda name: vertex_batch.submit(ctx, name))
    ctx.work.register("vertex_training", lambda name: vertex_training.submit(ctx, name))


def start(ctx: Context) -> None:
    threading.Thread(target=saved_model.warm, daemon=True, name="tf-import").start()
    if ctx.batch_engine == "beam":
        threading.Thread(target=_warm_beam, daemon=True, name="beam-import").start()
    recovery.recover(ctx)
    artifacts.ensure_store(ctx)
    training.prepare(ctx)
    take_over(ctx)
    ctx.work.start()
    threading.Thread(target=_take_over_forever, args=(ctx,), daemon=True, name="take-over").start()


def take_over(ctx: Context) -> int:
    """Take and redo unfinished work no live replica holds; give back leases of work that has ended."""
    held_before = ctx.work.held()
    unfinished: set[str] = set()
    adopted = 0
    for kind, (pending, adopt) in ADOPTERS.items():
        names = pending(ctx)
        unfinished.update(names)
        for name in names:
            if ctx.work.take(kind, name):
                adopted += 1
                adopt(ctx, name)
    ctx.work.finished(held_before - unfinished)
    return adopted


def _take_over_forever(ctx: Context) -> None:
    period = max(1.0, ctx.work.leases.seconds / 3)
    while not ctx.stopping.wait(period):
        try:
            take_over(ctx)
        except Exception as error:
            if ctx.stopping.is_set():
                return
            log.warning("take-over pass failed (%s); tried again in %.0f s", error, period)


def stop(ctx: Context) -> None:
    recovery.release_attempts(ctx)
    ctx.shutdown()


def _warm_beam() -> None:
    """Import Apache Beam and its runner (several seconds) so the first beam job is not slow."""
    from include.local_platform.workers import beam_engine

    beam_engine.warm()
