"""Shared, expensive trainer artefacts: one tiny dataset, one tiny trained model, one export.

Session-scoped so the whole trainer suite trains and exports once; each lives
under its own unique prefix in the shared test bucket.
"""

from __future__ import annotations

import uuid

import pytest

TINY_EXAMPLES = 48
TINY_IMAGE_SIZE = 16


@pytest.fixture(scope="session")
def trainer_root(bucket) -> str:
    return f"gs://{bucket.name}/trainer-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def tiny_data(trainer_root) -> tuple[str, dict]:
    """(data URI, summary) of a small generated dataset."""
    from include.trainer import data

    uri = f"{trainer_root}/data"
    return uri, data.generate_dataset(uri, num_examples=TINY_EXAMPLES, image_size=TINY_IMAGE_SIZE, seed=7)


@pytest.fixture(scope="session")
def tiny_job(tiny_data, trainer_root) -> tuple[str, dict]:
    """(job dir, metrics) of a one-epoch training run on the tiny dataset."""
    from include.trainer import task

    job_dir = f"{trainer_root}/job"
    return job_dir, task.train(tiny_data[0], job_dir, epochs=1, batch_size=16, seed=7)


@pytest.fixture(scope="session")
def tiny_export(tiny_job, trainer_root) -> dict[str, str]:
    """variant -> gs:// URI of the verified export of the tiny model."""
    from include.trainer import export

    return export.export_variants(tiny_job[0], f"{trainer_root}/export", num_check_images=4)


@pytest.fixture(scope="session")
def tiny_model(tiny_job):
    from include.trainer import task

    return task.load_model(tiny_job[0])
