"""Export stage: student checkpoints -> ONNX, TFLite (LiteRT) and CoreML artifacts with parity checks.

Library API: :func:`pocketswap.export.pipeline.export_model` and :func:`pocketswap.export.patch.patch_model`;
CLI: ``pocketswap export`` (:mod:`pocketswap.export.cli`). Modules: ``onnx_export``, ``tflite``, ``coreml``,
``parity``, ``patch``, ``enroll``, ``data``, ``common``; the pipeline runs ``job`` (what every artifact
shares), ``formats`` (student artifacts per format) and ``enroll_export``. Conversion facts behind the design are in each
module's docstring (from ``shared/notes/export-findings.md``).
"""
