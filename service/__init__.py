"""The HTTP forecast service: FastAPI routes, a durable job queue and a batching worker.

`service.app.create_app` builds the app; `weather serve` and `weather worker` run it (the
service adds those two commands to `weather` through the "weather.commands" entry point, so the
library never imports the service). The service calls only the public API of `weather`
(`weather.forecast`, `weather.model`, `weather.scoring.metrics`, `weather.data`, the embedded
archive of `weather.evaluation.demo`); `tests/test_layout.py` checks that imports run that one
way.
"""
