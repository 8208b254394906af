"""The wires: ml/v1 over HTTP (``ml_v1_http`` -> ``ml_v1_routes`` -> ``resources``; ``:predict`` in
``ml_v1_predict``), who may call (``security``, ``ui_login``), pages, the fault switch, request logs."""
