"""The workers' start and stop: which runner takes which kind of work, what resumes after a restart.

``register`` (at app creation) gives the work queue one runner per kind of work.
``start`` (before the service answers) warms TensorFlow (and Beam) in the
background, closes what a crash left half done (``recovery``), then resumes
interrupted work: deployments, batch jobs, training jobs, each by its own
module's ``resume``. ``stop`` (a graceful stop) gives back the attempts of work
in flight, so only crashes count towards a job's attempt limit.
"""

from __future__ import annotations

import threading

from include.local_platform.context import Context
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
    deployment.resume(ctx)
    batch.resume(ctx)
    training.resume(ctx)
    vertex_deployment.resume(ctx)
    vertex_batch.resume(ctx)
    vertex_training.resume(ctx)


def stop(ctx: Context) -> None:
    recovery.release_attempts(ctx)
    ctx.shutdown()


def _warm_beam() -> None:
    """Import Apache Beam and its runner (several seconds) so the first beam job is not slow."""
    from include.local_platform.workers import beam_engine

    beam_engine.warm()
