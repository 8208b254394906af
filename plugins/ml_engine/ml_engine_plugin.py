"""AirflowPlugin registering the ml/v1 extra links.

Airflow's plugin manager imports every .py file under plugins/ by its bare file
name, so the other modules of this package are listed in .airflowignore beside
this file: they are imported as ``ml_engine.*`` only, never twice.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ml_engine.links import MLEngineJobLink, MLEngineVersionLink


class MLEnginePlugin(AirflowPlugin):
    """Makes the ml/v1 links known to Airflow (``airflow plugins`` lists them).

    In Airflow 3 the operators declare the links themselves (operator_extra_links)
    and the URL is stored in XCom when the task ends, so nothing here changes how
    a link is shown; the links' ``operators`` lists stay empty on purpose.
    """

    name = "ml_engine"
    operator_extra_links = [MLEngineVersionLink(), MLEngineJobLink()]
