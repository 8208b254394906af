"""Export the trained Keras model as SavedModel serving variants, verify each, upload to GCS.

Layout written under the export URI:

    <export_uri>/<variant>/saved_model.pb, variables/   one directory per variant (a deploymentUri)
    <export_uri>/verification.json                      max |diff| per variant and the tolerance

Verification: each SavedModel is reloaded with tf.saved_model.load and called
through `serving_default` with inputs built by the instance builders; its
heatmaps must match the Keras model's on the same pixels within TOLERANCE
(max absolute difference). For the JPEG variants "the same pixels" means the
JPEG decoded by `features.decode_jpeg`, the op path every graph uses, so any
drift in decoding shows up as a failure instead of a silently worse model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import features, gcs, instances, synthetic, task
from .errors import TrainerError
from .serving import INSTANCES, URL, VARIANTS, HeatmapServer, image_size_of

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
VERIFICATION_NAME = "verification.json"
NUM_CHECK_IMAGES = 8
CHECK_SEED = 20240601


class VerificationError(TrainerError):
    """A serving variant disagrees with the Keras model it was exported from."""


def verify_saved_model(
    export_dir: str | Path,
    variant: str,
    model: keras.Model,
    jpegs: Sequence[bytes],
    keys: Sequence[str],
    *,
    tolerance: float = TOLERANCE,
    stage_dir: str | Path,
) -> float:
    """Load `export_dir`, run it on the instances for `jpegs`, compare with `model`; return max |diff|."""
    size = image_size_of(model)
    image_urls = None
    if variant == URL:
        image_dir = Path(stage_dir) / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        image_urls = []
        for jpeg, key in zip(jpegs, keys, strict=True):
            path = image_dir / f"{key}.jpg"
            path.write_bytes(jpeg)
            image_urls.append(str(path))
    built = instances.build_instances(variant, jpegs, keys, image_size=size, image_urls=image_urls)
    inputs = instances.to_signature_inputs(variant, built, stage_dir=stage_dir)
    pixels = inputs["image"].numpy() if variant == INSTANCES else features.decode_jpeg_numpy(list(jpegs), size)
    expected = np.asarray(model(pixels, training=False))

    outputs = tf.saved_model.load(str(export_dir)).signatures["serving_default"](**inputs)
    heatmap = outputs["heatmap"].numpy()
    if heatmap.shape != expected.shape:
        raise VerificationError(f"{variant}: heatmap shape {heatmap.shape}, Keras gives {expected.shape}")
    returned_keys = [k.decode("utf-8") for k in outputs["key"].numpy().tolist()]
    if returned_keys != list(keys):
        raise VerificationError(f"{variant}: keys {returned_keys} do not pass through as {list(keys)}")
    max_diff = float(np.max(np.abs(heatmap - expected))) if heatmap.size else 0.0
    if not max_diff <= tolerance:
        raise VerificationError(f"{variant}: max |diff| {max_diff:.3g} vs Keras exceeds {tolerance:g}")
    log.info("Variant %s matches Keras on %s images: max |diff| %.3g <= %g", variant, len(jpegs), max_diff,
             tolerance)
    return max_diff


def export_variants(
    job_dir: str,
    export_uri: str,
    *,
    variants: Sequence[str] = VARIANTS,
    tolerance: float = TOLERANCE,
    num_check_images: int = NUM_CHECK_IMAGES,
) -> dict[str, str]:
    """Export `job_dir/model.keras` as each variant, verify it, upload it; returns variant -> gs:// URI.

    Nothing is uploaded unless every requested variant verifies, so a failed export
    never leaves a half-usable set of deployment URIs behind.
    """
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; expected some of {VARIANTS}")
    model = task.load_model(job_dir)
    size = image_size_of(model)
    check_images, _ = synthetic.make_examples(num_check_images, size, CHECK_SEED)
    jpegs, keys = instances.to_jpegs(check_images, keys=[f"check-{i:03d}" for i in range(num_check_images)])

    with tempfile.TemporaryDirectory(prefix="trainer-export-") as tmp:
        diffs: dict[str, float] = {}
        for variant in variants:
            local_dir = Path(tmp) / variant
            HeatmapServer(model, variant).save(str(local_dir))
            diffs[variant] = verify_saved_model(local_dir, variant, model, jpegs, keys, tolerance=tolerance,
                                                stage_dir=Path(tmp) / f"check-{variant}")
        uris = {}
        for variant in variants:
            uris[variant] = gcs.join(export_uri, variant)
            gcs.upload_dir(Path(tmp) / variant, uris[variant])

    report = {"job_dir": job_dir, "image_size": size, "tolerance": tolerance, "check_images": num_check_images,
              "max_abs_diff": diffs, "variants": uris}
    gcs.write_text(gcs.join(export_uri, VERIFICATION_NAME), json.dumps(report, indent=2),
                   content_type="application/json")
    log.info("Exported %s variants of %s to %s", len(uris), job_dir, export_uri)
    return uris
