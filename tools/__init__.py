"""Developer tooling: the local stack (``make services``, ``make airflow``) and the run summary; not in the image."""
