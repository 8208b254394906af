"""The serving variants the trainer exports, without TensorFlow: safe to import at DAG parse time.

`include.config` takes the list from here, so the trainer (its own package for ml/v1
training jobs) stays the one owner of what it can export.
"""

from __future__ import annotations

B64 = "b64"
INSTANCES = "instances"
URL = "url"
TFEXAMPLE = "tfexample"
#: Every variant, in the order the DAGs deploy them by default.
VARIANTS = (B64, INSTANCES, URL, TFEXAMPLE)
