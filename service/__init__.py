"""The HTTP forecast service: FastAPI routes, a durable job queue and a batching worker.

`service.app.create_app` builds the app; `weather serve` and `weather worker` run it. The service
calls only the public API of `weather` (`weather.forecast`, `weather.model.rollout`,
`weather.scoring.metrics`, `weather.data`).
"""
