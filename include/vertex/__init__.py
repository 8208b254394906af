"""The lifecycle on Vertex AI: the wiring between the DAGs' platform-neutral decisions and Vertex AI.

Everything goes through the Airflow provider's maintained Vertex AI hooks (and their GAPIC
clients where a hook has no method for a call):

- ``names``: model ids, version aliases and endpoint ids derived from the run, as on ml/v1.
- ``registry``: the model registry in the shape ``include.lifecycle`` reads (an MLEngineHook's
  methods: ``get_model``, ``get_version``, ``list_versions``, ``patch_version``,
  ``predict_in_chunks``, ``list_jobs``), and idempotent version uploads.
- ``serving``: endpoints: find or create, deploy once, traffic shares, undeploy, predict.
"""
