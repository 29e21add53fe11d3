"""The batch-scoring program: `normalcy score` over folders, globs, `.npy` and IDX files.

    score.py        the job: inputs, work area, journal, the local engine, the summary
    ray_engine.py   the Ray engine: the same chunks and scoring function on Ray Data
    scoring.py      score_batch, the one scoring function both engines run
    inputs.py       what a job scores: items, chunks, decoding (the readers are detectors.sources)
    results.py      the journal and the RESULTS file (CSV, JSONL, Parquet)

The import rule: `jobs` imports `detectors`, never torch, FastAPI, `training` or `service`, and its
engines never import each other; only the `normalcy` package imports it.
"""
