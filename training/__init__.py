"""PyTorch: the models, their training, export to one ONNX bundle, and reports (`normalcy train`,
`report`, `demo`; the `train` extra).

    models/         the PixelCNN and the VAE (pure model code) and the PixelCNN's sampler
    data.py         seeded train / validation / calibration splits (the readers are detectors')
    train.py        the training loop and its checkpoints; distributed.py for torchrun
    export.py       the ONNX graph and the bundle's metadata (BundleSpec)
    pipeline.py     data -> fitted model -> graph -> calibrated bundle
    report.py       the HTML report: figures.py its sections, plots.py the drawing
    demo.py         `make demo`

The import rule: `training` imports `detectors` (for the bundle, the readers and the calibration),
never `service`, `jobs` or `normalcy`; only the `normalcy` package imports it.
"""
