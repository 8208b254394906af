"""Airflow integration for Google's ML Engine REST API (ml/v1).

hooks.MLEngineHook (googleapiclient "ml"/"v1", endpoint from the connection),
operators (models, versions, default version, training jobs, batch and online prediction),
triggers (deferrable waits) and links (extra links to versions and jobs).
DAGs import ``ml_engine.operators``: Airflow puts plugins/ on sys.path.
"""
