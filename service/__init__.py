"""The HTTP scoring service (FastAPI): `normalcy serve`.

    app.py          create_app(settings) and the lifespan that loads the models once
    api_v1.py       the plain JSON / multipart scoring API, model metadata, admin reload
    api_v2.py       the KServe / Triton Open Inference Protocol v2
    requests.py     request bodies -> uint8 image batches (the input rules are detectors')
    registry.py     the model folder: scan, load, warm-up, atomic swap, drain
    model.py        ServedModel: one detector, its micro-batcher (`execute`), metrics, drift
    batcher.py      the micro-batcher
    deps.py, errors.py, middleware.py, schemas.py, settings.py, metrics.py, static/

The import rule: `service` imports `detectors` and web libraries, never torch, `training` or
`jobs` (the serving image carries none of them); only the `normalcy` package imports it.
"""
