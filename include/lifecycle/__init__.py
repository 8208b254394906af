"""The decisions behind the DAGs and small GCS readers: names, labels, the gate, retention, batch summaries.

Kept out of the DAG files so the logic is unit-testable and the DAG files stay
thin. Functions that read ml/v1 take the hook as an argument. Nothing here imports
TensorFlow; of Airflow only `errors` imports `AirflowFailException`, and `naming`
takes the id rule from the plugin (`ml_engine.names`).
"""
