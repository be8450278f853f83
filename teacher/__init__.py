"""teacher stage: teachers (built-in geometric, ONNX adapters) and the paired-data generator.

- `pocketswap.teacher.base`: `AlignedRecord`, `TeacherOutput`, `Teacher`, `load_teacher`;
- `pocketswap.teacher.geometric`: the training-free mesh-warp teacher (default);
- `pocketswap.teacher.onnx_teachers`: inswapper / SimSwap / GHOST style ONNX adapters;
- `pocketswap.teacher.augment`: flips, pose/expression warps, colour, occluders, pseudo-identities;
- `pocketswap.teacher.generate`: `generate` (tar shards, see `pocketswap.core.dataset`), orchestrating
  `config` (`GenerateConfig`), `analysis` (images -> cached aligned records), `pairs` (pair sampling
  and the teacher, in workers), `shards` (records, recovery, manifest) and `workers` (process set-up).
"""
