"""The ground floor: the contracts every stage shares, importing no stage.

Formats passed between stages (dataset manifest and shards, checkpoints, the artifact manifest), the
typed swap contract (`spec.SwapSpec`: crop, layout, normalisation) and identity (`identity.Identity`),
the one set of image metrics (`metrics`), the one config grammar (`config`), the one way to open an
ONNX Runtime session or a LiteRT interpreter (`runners`), errors and atomic file IO.
``tests/test_layout.py`` checks that nothing here imports a stage, the CLI or the demo.
"""
