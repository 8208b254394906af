"""Pure decisions and small GCS readers behind the DAGs: names, labels, the gate, retention, batch summaries.

Kept out of the DAG files so the logic is unit-testable and the DAG files stay
thin; nothing here imports TensorFlow or Airflow.
"""
