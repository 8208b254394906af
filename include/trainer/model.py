"""The network: a small fully convolutional tf.keras model from image to heatmap, and its IoU metric.

Dilated convolutions give a ~15 px receptive field with few weights, enough to
judge a blob's peak brightness from its rim while training in seconds on CPU.
"""

from __future__ import annotations

import keras
from keras import layers, ops

IOU_THRESHOLD = 0.5
# Bright regions cover a few percent of the pixels: start the output near that prior
# instead of 0.5 so the first epochs are not spent learning "mostly background".
OUTPUT_BIAS = -3.0


@keras.saving.register_keras_serializable(package="trainer")
def heatmap_loss(y_true, y_pred):
    """Per-pixel binary cross-entropy plus soft Dice per image.

    Cross-entropy alone collapses to an all-background heatmap on this imbalanced
    target; the Dice term rewards overlap with the few bright pixels.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    bce = ops.mean(keras.losses.binary_crossentropy(y_true[..., None], y_pred[..., None]), axis=(1, 2))
    intersection = ops.sum(y_true * y_pred, axis=(1, 2))
    total = ops.sum(y_true + y_pred, axis=(1, 2))
    return bce + 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)


@keras.saving.register_keras_serializable(package="trainer")
class ThresholdIoU(keras.metrics.Metric):
    """IoU of prediction and target, both thresholded, accumulated over all pixels of all batches.

    This is the quality metric the promotion gate compares (`val_iou` in metrics.json).
    An epoch where neither target nor prediction has a positive pixel scores 1.0.
    """

    def __init__(self, threshold: float = IOU_THRESHOLD, name: str = "iou", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.union = self.add_variable(shape=(), initializer="zeros", name="union")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        target = ops.cast(ops.greater_equal(y_true, self.threshold), "float32")
        predicted = ops.cast(ops.greater_equal(y_pred, self.threshold), "float32")
        self.intersection.assign_add(ops.sum(target * predicted))
        self.union.assign_add(ops.sum(ops.maximum(target, predicted)))

    def result(self):
        return ops.where(self.union > 0, self.intersection / ops.maximum(self.union, 1.0), 1.0)

    def reset_state(self) -> None:
        self.intersection.assign(0.0)
        self.union.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


def build_model(image_size: int, *, filters: int = 24) -> keras.Model:
    """float32 [N, S, S, 3] in [0, 1] -> heatmap float32 [N, S, S] in [0, 1]."""
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", dilation_rate=2)(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", dilation_rate=4)(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=keras.initializers.Constant(OUTPUT_BIAS))(x)
    outputs = layers.Reshape((image_size, image_size), name="heatmap")(x)
    return keras.Model(inputs, outputs, name="bright_region_heatmap")


def compile_model(model: keras.Model, *, learning_rate: float, decay_steps: int | None = None) -> keras.Model:
    """Cross-entropy + Dice on the soft heatmap, with IoU reported each epoch.

    With `decay_steps` (the whole run's steps) the rate follows a cosine down to
    ~0, so the last epochs settle instead of bouncing around the plateau.
    """
    schedule = (keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.02)
                if decay_steps else learning_rate)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=heatmap_loss,
        metrics=[ThresholdIoU()],
    )
    return model
