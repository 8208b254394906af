"""Beam's GCS IO against the local GCS emulator, with no credentials at all.

Beam 2.77 builds its storage client in `apache_beam.io.gcp.gcsio.create_storage_client`:
it asks `auth.get_service_credentials` for Application Default Credentials first,
and when there are none (as with the emulator) that lookup retries for about
30 s before Beam falls back to `storage.Client.create_anonymous_client()`. That
anonymous client honours STORAGE_EMULATOR_HOST like every google-cloud-storage
client. So, with STORAGE_EMULATOR_HOST set, this module records "no credentials"
in Beam's credential cache up front: the anonymous emulator client is used at
once. Without it (real GCS, Dataflow) nothing changes.

The beam engine imports this module in the service and names it in the
pipeline's `--beam_plugins`, so every SDK worker process imports it at start too.
"""

from __future__ import annotations

import os


def use_emulator_without_credentials() -> bool:
    """With STORAGE_EMULATOR_HOST set, make Beam's GCS client anonymous right away; True if it did."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return False
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
    return True


use_emulator_without_credentials()
